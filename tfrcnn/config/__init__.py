"""Configuration: MMDetection's config tree as typed dataclasses (`schema`), their generic validation
(`validate`), and YAML files with `_base_`, `_delete_` and `--params_override` strings (`load`).

A config is YAML whose keys are MMDetection's names (`model.rpn_head.anchor_generator.scales`,
`train_cfg.rcnn.sampler.num`, `test_cfg.rcnn.score_thr`, ...); `load_config` gives the validated `Config`.
"""
from tfrcnn.config import schema
from tfrcnn.config.load import CONFIG_NAME, apply_overrides, dump_config, load_config, save_config
from tfrcnn.config.schema import *  # noqa: F403  (every section dataclass, and Config)
from tfrcnn.config.validate import ConfigError

__all__ = ["CONFIG_NAME", "ConfigError", "apply_overrides", "dump_config", "load_config", "save_config",
           *schema.__all__]
