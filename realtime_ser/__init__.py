"""realtime-ser: live speech emotion recognition, utterance by utterance."""

__version__ = "0.1.0"
