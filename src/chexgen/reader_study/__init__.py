"""chexgen.reader_study: blinded radiologist rating of real and synthetic radiographs.

* :mod:`~chexgen.reader_study.study`: create a study from a real and synthetic manifests
  (stratified cases, opaque items, per-rater orders), add raters, re-issue tokens;
* :mod:`~chexgen.reader_study.images`: pixel-only re-encoding (the blinding);
* :mod:`~chexgen.reader_study.storage`: the SQLAlchemy database (SQLite or PostgreSQL);
* :mod:`~chexgen.reader_study.app`: the FastAPI web app raters and the study lead use;
* :mod:`~chexgen.reader_study.analysis`: scores, tests, agreement, realism, the HTML report.

The web app needs the ``reader`` extra (``pip install chexgen[reader]``).
"""
