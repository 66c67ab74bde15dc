"""Training pipelines: config (YAML + overrides), Lightning DataModule/LightningModules, full-ranking evaluation,
``recsparse train`` — one entry point for every task (ranking and CTR), on one process or sharded.

* :mod:`.config` — :class:`TrainConfig` (``task: ranking``), :class:`CTRConfig` (``task: ctr``) and their sections,
  :func:`load_config`.
* :mod:`.data` — :func:`build_split`, :class:`RecDataModule`, :class:`FeatureStore` (-> KeyedJaggedTensor).
* :mod:`.modules` — :class:`TaskModule` (the contract ``run`` trains through), :class:`MFModule`,
  :class:`LightGCNModule`, :class:`TwoTowerModule`.
* :mod:`.ctr` — the CTR task: :class:`CTRDataModule`, :class:`CTRModule`, :func:`fit_ctr`.
* :mod:`.evaluation` — :func:`full_ranking_metrics` (streaming top-k, both Recall protocols, FAISS option).
* :mod:`.strategy` — :class:`TorchRecStrategy` (TorchRec DMP under Lightning), sharded checkpoints.
* :mod:`.train` — :func:`run` (fit + test, checkpoints, loggers, early stopping).
"""
