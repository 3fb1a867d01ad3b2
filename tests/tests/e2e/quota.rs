//! ResourceQuota with kubectl: `create quota`, pods and objects refused past it with the
//! apiserver's words, usage shown by `get quota`, and room again once something goes.

use nodeless_tests::{KUBECTL_VERSIONS, Nodeless, eventually};

fn pod(name: &str, cpu: Option<&str>) -> String {
    let resources = cpu
        .map(|c| format!(", resources: {{requests: {{cpu: {c}}}}}"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - {{name: c, image: nginx{resources}}}\n"
    )
}

#[test]
fn quotas_bound_what_a_namespace_holds() {
    let n = Nodeless::start().unwrap();
    let kc = n.kubeconfig();
    for v in KUBECTL_VERSIONS {
        let ns = format!("quota-{}", v.replace('.', "-"));
        n.kubectl_ok(v, &["create", "namespace", &ns]);
        n.kubectl_ok(
            v,
            &[
                "create",
                "quota",
                "q",
                "--hard=pods=2,requests.cpu=1,configmaps=2",
                "-n",
                &ns,
            ],
        );
        let apply = |yaml: &str| n.kubectl_with(v, &kc, &["apply", "-n", &ns, "-f", "-"], Some(yaml));
        let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();
        assert!(apply(&pod("a", Some("500m"))).status.success());
        let no_size = apply(&pod("b", None));
        assert!(
            err(&no_size).contains("forbidden: failed quota: q: must specify requests.cpu"),
            "{}",
            err(&no_size)
        );
        assert!(apply(&pod("b", Some("500m"))).status.success());
        let over = apply(&pod("c", Some("100m")));
        assert!(
            err(&over).contains(
                "pods \"c\" is forbidden: exceeded quota: q, requested: pods=1,requests.cpu=100m, used: pods=2,requests.cpu=1, limited: pods=2,requests.cpu=1"
            ),
            "{}",
            err(&over)
        );
        eventually("get quota to show the pods", 20, || {
            let t = String::from_utf8_lossy(&n.kubectl(v, &["get", "quota", "q", "-n", &ns]).stdout).to_string();
            t.contains("pods: 2/2") && t.contains("requests.cpu: 1/1")
        });
        // kube-root-ca.crt is one of the two ConfigMaps, as on Kubernetes.
        n.kubectl_ok(v, &["create", "configmap", "x", "-n", &ns]);
        let cm = n.kubectl(v, &["create", "configmap", "y", "-n", &ns]);
        assert!(
            err(&cm).contains("exceeded quota: q, requested: configmaps=1, used: configmaps=2, limited: configmaps=2"),
            "{}",
            err(&cm)
        );
        // Room again once a pod goes.
        n.kubectl_ok(v, &["delete", "pod", "a", "-n", &ns, "--grace-period=0", "--force"]);
        assert!(apply(&pod("c", Some("100m"))).status.success());
        let bad = apply("apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: bad}\nspec: {hard: {pods: two}}\n");
        assert!(err(&bad).contains("spec.hard[pods]"), "{}", err(&bad));
    }
}
