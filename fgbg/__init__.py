"""fgbg: human video generation with disentangled foreground (pose) and background (track) motion."""

__version__ = "0.1.0"

# ${fgbg_asset:NAME} in configs (model=fgbg_tiny_latent's bundled VAE): registered on import, so every entry
# point that reads a saved run config (bundles, generate, evaluate, the app) resolves it.
from fgbg.utils import config as _config  # noqa: E402,F401
