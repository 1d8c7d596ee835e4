"""The KMS contract suite: every provider against its real server, through one harness."""
