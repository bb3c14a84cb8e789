"""VOS evaluation: J&F scoring (``evaluator``, ``metrics``), mask I/O (``masks``), the Markdown report
(``report``) and data-set inference with the video predictor (``vos_inference``)."""
