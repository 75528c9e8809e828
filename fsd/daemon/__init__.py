"""The I/O layer: the trio nursery over vhost-user, queues, control socket and /dev/fuse."""
