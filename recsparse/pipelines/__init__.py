"""Training pipelines: config (YAML + overrides), Lightning DataModule/LightningModules, full-ranking evaluation,
``recsparse train``.

* :mod:`.config` — :class:`TrainConfig` and sections, :func:`load_config`.
* :mod:`.data` — :func:`build_split`, :class:`RecDataModule`, :class:`FeatureStore` (-> KeyedJaggedTensor).
* :mod:`.modules` — :class:`MFModule`, :class:`LightGCNModule`, :class:`TwoTowerModule`.
* :mod:`.evaluation` — :func:`full_ranking_metrics` (streaming top-k, both Recall protocols, FAISS option).
* :mod:`.train` — :func:`run` (fit + test, checkpoints, loggers, early stopping).
"""
