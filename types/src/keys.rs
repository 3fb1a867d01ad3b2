//! Well-known keys. Kubernetes' own where one exists; `nodeless.io/` for the platform's.

/// Label the ReplicaSet controller stamps on ReplicaSets and their pods.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Annotation holding a Deployment's / ReplicaSet's rollout revision.
pub const DEPLOYMENT_REVISION: &str = "deployment.kubernetes.io/revision";
/// Annotation with the desired replica count, set on ReplicaSets by the Deployment controller.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// Annotation with replicas + maxSurge, set on ReplicaSets by the Deployment controller.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Label on EndpointSlices naming their Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label on EndpointSlices naming the controller that manages them.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY`] for slices made by the control plane.
pub const ENDPOINTSLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// Annotation marking the default IngressClass.
pub const DEFAULT_INGRESS_CLASS: &str = "ingressclass.kubernetes.io/is-default-class";
/// Annotation kubectl keeps the last client-side applied configuration in.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Taint every Nodeless virtual node carries; pods tolerate it to be scheduled there.
pub const VIRTUAL_NODE_TAINT: &str = "virtual-kubelet.io/provider";
/// Label on virtual nodes, as virtual-kubelet sets it.
pub const NODE_TYPE_LABEL: &str = "type";
/// Finalizer the namespace controller holds while it empties a namespace.
pub const NAMESPACE_FINALIZER: &str = "kubernetes";
/// Finalizer that makes a deletion wait for dependents (propagationPolicy Foreground).
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// Finalizer that orphans dependents (propagationPolicy Orphan).
pub const ORPHAN_FINALIZER: &str = "orphan";
