"""Search: query tiles in, hits out.

- :mod:`hashview.search.searcher`: ``Searcher``, an in-memory index of one library (exact, or
  the approximate index of its sidecar), ``Hit``, ``Vote``, ``vote``, ``aggregate_by_source``.
- :mod:`hashview.search.sidecar`: the approximate index (IVF / multi-hash) kept next to a
  library (``LIB.h5.hvindex``); :mod:`hashview.search.sidecar_payload` checks its FAISS payload.
- :mod:`hashview.search.query`: images and slide regions to query tiles, the merge of a
  region's hits, ``QueryResult``.
- :mod:`hashview.search.result_summary`: what a result may claim, in words.
- :mod:`hashview.search.heatmap`: a slide's indexed tiles coloured by distance to a query.
- :mod:`hashview.search.refine`: refine a search by example (the bitwise majority of the
  query and the hits marked good, pushed away from those marked bad).
- :mod:`hashview.search.cases`: whole-slide search (a mosaic of the query slide, slides ranked
  by the median of the mosaic's minimum distances; cases by patient).

The object scripts, the CLI and the app search through is
:class:`hashview.session.LibrarySession` (``hashview.open_library``).
"""

from hashview.search.searcher import (SINGLE_THREAD_BELOW, Hit, Searcher, SourceSummary, Vote,
                                      aggregate_by_source, exact_topk, faiss_threads,
                                      hits_to_dict, vote)

__all__ = ["SINGLE_THREAD_BELOW", "Hit", "Searcher", "SourceSummary", "Vote",
           "aggregate_by_source", "exact_topk", "faiss_threads", "hits_to_dict", "vote"]
