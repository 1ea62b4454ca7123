"""Offline trainer for realtime_ser: corpora -> one manifest format -> folds -> models.

``python -m training convert CORPUS --out MANIFEST.csv`` makes a manifest; see
:mod:`training.data` for the format and :mod:`training.folds` for the folds.
"""
