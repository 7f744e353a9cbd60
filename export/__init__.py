"""Export: freeze a checkpoint into ONNX with `If` branches and an int8 TFLite model (`cg-export`)."""
