"""Settings ▸ Indexing runs on: the app submits its index jobs to a Ray cluster when asked, and
offers the choice only where Ray is installed. (The Ray run itself: tests/test_cluster.py.)"""

from __future__ import annotations

from conftest import KATHER


def _submitted(window, monkeypatch) -> list:
    specs = []
    monkeypatch.setattr(window, "submit_job", specs.append)  # the job's spec, not a Ray run
    window.add_to_library([str(KATHER)])
    return specs


def test_index_jobs_go_to_ray_with_the_address_and_workers_set(qtbot, window, monkeypatch):
    from hashview.gui.dialogs import SettingsDialog

    assert "engine" not in _submitted(window, monkeypatch)[0].args  # this computer by default

    dialog = SettingsDialog(window.settings, window)
    qtbot.addWidget(dialog)
    assert not dialog.ray_address.isEnabled()  # only with the Ray choice
    dialog.engine.setCurrentIndex(dialog.engine.findData("ray"))
    assert dialog.ray_address.isEnabled() and dialog.ray_workers.isEnabled()
    dialog.ray_address.setText(" ray://head:10001 ")
    dialog.ray_workers.setValue(6)
    dialog.apply()

    spec = _submitted(window, monkeypatch)[0]
    assert spec.args["engine"] == "ray"
    assert (spec.args["address"], spec.args["workers"]) == ("ray://head:10001", 6)
    assert spec.title.endswith(" on Ray")
    assert spec.args["library_path"] == window.library_path

    dialog = SettingsDialog(window.settings, window)  # the choice is kept and shown again
    qtbot.addWidget(dialog)
    assert dialog.engine.currentData() == "ray" and dialog.ray_workers.value() == 6
    dialog.ray_address.setText("")
    dialog.apply()
    assert _submitted(window, monkeypatch)[0].args["address"] is None  # a local Ray

    dialog.engine.setCurrentIndex(dialog.engine.findData("local"))
    dialog.apply()
    assert "engine" not in _submitted(window, monkeypatch)[0].args


def test_without_ray_the_cluster_choice_is_greyed_out_with_the_install_line(
        qtbot, window, monkeypatch):
    import hashview.cluster
    from hashview.gui.dialogs import SettingsDialog

    window.settings.index_engine = "ray"  # chosen when Ray was there
    monkeypatch.setattr(hashview.cluster, "ray_installed", lambda: False)
    dialog = SettingsDialog(window.settings, window)
    qtbot.addWidget(dialog)
    assert dialog.engine.currentData() == "local"
    assert not dialog.engine.model().item(1).isEnabled()
    assert "hashview[cluster]" in dialog.engine.itemData(1, 3)  # Qt.ToolTipRole
    assert not dialog.ray_address.isEnabled()
