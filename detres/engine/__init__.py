"""Training and evaluation machinery shared by classification and detection."""
from detres.engine.defaults import default_argument_parser, default_setup
from detres.engine.launch import launch
from detres.engine.trainer import Trainer

__all__ = ["Trainer", "default_argument_parser", "default_setup", "launch"]
