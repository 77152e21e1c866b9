"""The file MLflow runs to build the logged classifier's pyfunc (models from code: no pickle of Python objects).

`serving.log_model` logs it as the model's code; loading the model runs it with the package beside it
(`code_paths`), and `set_model` hands MLflow the `OneShotModel` that reads the checkpoint in `load_context`.
"""

from mlflow.models import set_model

from pipeline.serving import OneShotModel

set_model(OneShotModel())
