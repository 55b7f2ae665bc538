"""The session's S3 server (SeaweedFS) for the export tests, as the object-store tests use it."""

from tests.storage.conftest import S3Server, s3_server

__all__ = ["S3Server", "s3_server"]
