"""Live emotion: exported models (ONNX + card), dialogue context and the emotion stage."""
