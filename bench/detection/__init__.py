"""Smear fields with boxes: the three annotation formats read and checked (:mod:`.data`), the
fields split, decoded and batched (:mod:`.fields`), COCO metrics and the count error
(:mod:`.metrics`), and synthetic fields with exact boxes (:mod:`.synthetic`). A detector trains
in :mod:`bench.training.detector`.
"""
