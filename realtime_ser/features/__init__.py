"""Acoustic front end shared by training and live inference: utterance functionals and their cache."""

from realtime_ser.features.acoustic import AcousticConfig, AcousticFeatures
from realtime_ser.features.cache import FeatureCache, default_cache_root

__all__ = ["AcousticConfig", "AcousticFeatures", "FeatureCache", "default_cache_root"]
