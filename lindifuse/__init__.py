"""lindifuse: mount LINDI files as Zarr directories with FUSE."""

__version__ = "0.1.0"
