"""``k8s://NAMESPACE/CONFIGMAP``: the registry's flat files as the keys of one ConfigMap,
written through the Kubernetes API with the official client.

Read-modify-write uses the ConfigMap's ``resourceVersion`` (optimistic concurrency):
a replace that lost a race gets 409 and is retried on the fresh object, so concurrent
writers (the CLI, the optimizer, the canary controller) never lose an update. Proxies
mount the same ConfigMap as a directory and read it with :class:`DirectoryStore`.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from flywheel.registry.errors import RegistryError
from flywheel.registry.store import Change

_ATTEMPTS = 20


class ConfigMapStore:
    def __init__(self, namespace: str, name: str, api: Any) -> None:
        self.namespace = namespace
        self.name = name
        self._api = api  # kubernetes.client.CoreV1Api

    @classmethod
    def connect(cls, spec: str, kubeconfig: str | None = None) -> ConfigMapStore:
        """``NAMESPACE/CONFIGMAP``, with the in-cluster service account or else ~/.kube/config."""
        namespace, _, name = spec.partition("/")
        if not namespace or not name or "/" in name:
            raise RegistryError(f"k8s://{spec}: expected k8s://NAMESPACE/CONFIGMAP")
        try:
            import kubernetes
        except ImportError as exc:
            raise RegistryError("k8s:// registries need the kubernetes client: pip install 'flywheel[k8s]'") from exc
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            try:
                kubernetes.config.load_kube_config(config_file=kubeconfig)
            except (kubernetes.config.ConfigException, OSError) as exc:
                raise RegistryError(f"k8s://{spec}: no in-cluster service account and no kubeconfig ({exc})") from exc
        return cls(namespace, name, kubernetes.client.CoreV1Api())

    def keys(self) -> list[str]:
        config_map = self._get()
        return sorted((config_map.data or {}) if config_map is not None else ())

    def read(self, key: str) -> bytes | None:
        config_map = self._get()
        value = (config_map.data or {}).get(key) if config_map is not None else None
        return value.encode() if value is not None else None

    def update(self, key: str, change: Change) -> bytes | None:
        for _ in range(_ATTEMPTS):
            config_map = self._get() or self._create()
            if config_map is None:
                continue  # created by someone else meanwhile
            data = dict(config_map.data or {})
            old = data.get(key)
            new = change(old.encode() if old is not None else None)
            if new is None:
                return None
            data[key] = new.decode()
            config_map.data = data  # metadata.resourceVersion stays: the replace is a compare-and-swap
            if self._call(self._api.replace_namespaced_config_map, self.name, self.namespace, config_map):
                return new
        raise RegistryError(f"k8s://{self.namespace}/{self.name}: {key} kept changing; gave up after {_ATTEMPTS} tries")

    def fingerprint(self) -> Hashable:
        config_map = self._get()
        return config_map.metadata.resource_version if config_map is not None else None

    def _get(self) -> Any:
        return self._call(self._api.read_namespaced_config_map, self.name, self.namespace, missing_ok=True)

    def _create(self) -> Any:
        from kubernetes import client

        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=self.name, labels={"app.kubernetes.io/part-of": "flywheel"}), data={}
        )
        return self._call(self._api.create_namespaced_config_map, self.namespace, body)

    def _call(self, method: Any, *args: Any, missing_ok: bool = False) -> Any:
        """The API call's result; None on 404 (when ``missing_ok``) and on 409 (lost a race)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return method(*args)
        except ApiException as exc:
            if exc.status == 409 or (exc.status == 404 and missing_ok):
                return None
            raise RegistryError(
                f"k8s://{self.namespace}/{self.name}: Kubernetes API said {exc.status} {exc.reason}"
            ) from exc
        except (HTTPError, OSError) as exc:
            raise RegistryError(f"k8s://{self.namespace}/{self.name}: cannot reach the Kubernetes API: {exc}") from exc
