"""Where registered model versions logged before sam2.promotion existed find their class.

Their `python_model.pkl` pickles the wrapper by its class path, `sam2.mlflow_model.SAM2VideoModel`, so
this name must keep resolving for `mlflow.pyfunc.load_model` to load them. The code lives in
`sam2.promotion.pyfunc_model`; import from there.
"""

from sam2.promotion.pyfunc_model import SAM2VideoModel, pip_requirements, save_model_folder

__all__ = ["SAM2VideoModel", "pip_requirements", "save_model_folder"]
