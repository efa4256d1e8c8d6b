"""Global per-layer allocation for LMs (issue #26): the level ladders (:mod:`.levels`), the per-layer
candidate database (:mod:`.database`) and the stitched model scored for a search (:mod:`.stitch`).

The search algorithms themselves (DP, SPDY, evolutionary) are model-free and live in
:mod:`osscar.allocation`; this package gives them layers, costs and a fitness."""
