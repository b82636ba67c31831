"""Use what you train: the model file (``file.py``), the :class:`Model` API (``model.py``), prediction over a
data source (``predict.py``) and export to ONNX and torch (``export.py``)."""
