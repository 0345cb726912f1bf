"""HTTP API: DICOMweb (QIDO-RS, WADO-RS, STOW-RS) with bearer-token authentication."""

from viewer_api.auth import Role, TokenVerifier, create_token, load_or_create_secret
from viewer_api.main import create_app
from viewer_api.settings import ApiSettings

__all__ = [
    "ApiSettings",
    "Role",
    "TokenVerifier",
    "create_app",
    "create_token",
    "load_or_create_secret",
]
