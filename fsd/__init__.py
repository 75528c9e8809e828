"""fsd: a virtio-fs device daemon (vhost-user backend) in Python."""

__version__ = "0.1.0"
