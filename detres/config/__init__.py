from detres.config.config import CfgNode, ConfigError, get_cfg, load_config
from detres.config.defaults import _C as DEFAULTS

__all__ = ["CfgNode", "ConfigError", "DEFAULTS", "get_cfg", "load_config"]
