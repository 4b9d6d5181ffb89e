"""Tests against a real Kubernetes API server (etcd + kube-apiserver as local processes)."""
