"""Promotion: from a pipeline run's scores to a registered model version and the `champion` alias.

Modules, from the pure rule outwards:

- `rules`: the promotion rule (`choose`, `decide`) and its values (`Candidate`, `HeadToHead`,
  `ChampionInfo`, `Decision`, `PromotionResult`, `model_name_for`); no MLflow, no I/O.
- `comparison`: the models scored side by side (`ComparedModel`, keys NEW / CHAMPION / BASELINE) and the
  comparison JSON evaluate writes (`comparison_summary`), read back as `head_to_head` / `comparison_lines`.
- `references`: which reference models a run scores (`resolve_references`: champion, zero-shot baseline).
- `registry`: the registry client behind the small `ModelRegistry` interface (`MlflowModelRegistry`:
  register, promote under a lock, read the champion); a Kubeflow Model Registry backend would sit beside it.
- `tracking`: the MLflow run of a pipeline run (`RunRecord`, `log_pipeline_run`, `run_record_inputs`).
- `pyfunc_model`: the registered model as an MLflow pyfunc (`SAM2VideoModel`, `save_model_folder`).
- `pipeline_run`: the promote step's work, in order (`promote_pipeline_run`).

Nothing is imported here, so `sam2.promotion.rules` loads without MLflow.
"""
