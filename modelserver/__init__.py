"""The built-in model server: one saved model (scikit-learn, XGBoost, LightGBM, ONNX, PyTorch) served
over KServe V1 and the Open Inference Protocol V2, run as a revision's model server."""
