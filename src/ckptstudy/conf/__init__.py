"""Hydra configs of ckptstudy (a package so Hydra finds them as pkg://ckptstudy.conf)."""
