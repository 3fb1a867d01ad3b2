// A client-go program that speaks only protobuf to Nodeless (requests and answers, watch
// included), as controllers built on client-go do: create, get, list, watch, update, patch and
// delete of built-in kinds, checking that every field it wrote comes back. It exits non-zero,
// naming the step, on the first difference.
//
//	go run . KUBECONFIG
package main

import (
	"context"
	"fmt"
	"os"
	"reflect"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

const ns = "protobuf"

func fail(step string, err error) {
	fmt.Fprintf(os.Stderr, "FAIL %s: %v\n", step, err)
	os.Exit(1)
}

func check(step string, ok bool, format string, args ...any) {
	if !ok {
		fail(step, fmt.Errorf(format, args...))
	}
	fmt.Println("ok", step)
}

func main() {
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Args[1])
	if err != nil {
		fail("kubeconfig", err)
	}
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf"
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		fail("client", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	_, err = c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil {
		fail("create namespace", err)
	}

	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "conf", Labels: map[string]string{"app": "web"}},
		Data:       map[string]string{"a": "b", "empty": ""},
		BinaryData: map[string][]byte{"bin": {0, 1, 2, 255}},
	}
	got, err := c.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{})
	if err != nil {
		fail("create configmap", err)
	}
	check("configmap answer", reflect.DeepEqual(got.Data, cm.Data) && reflect.DeepEqual(got.BinaryData, cm.BinaryData) &&
		got.UID != "" && got.ResourceVersion != "" && !got.CreationTimestamp.IsZero(),
		"got %+v", got)

	replicas := int32(0)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Strategy: appsv1.DeploymentStrategy{
				Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{
					MaxSurge:       &intstr.IntOrString{Type: intstr.String, StrVal: "50%"},
					MaxUnavailable: &intstr.IntOrString{Type: intstr.Int, IntVal: 1},
				},
			},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}},
				Spec: corev1.PodSpec{
					Volumes: []corev1.Volume{{Name: "conf", VolumeSource: corev1.VolumeSource{
						ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "conf"}},
					}}},
					Containers: []corev1.Container{{
						Name:  "web",
						Image: "registry.local/web:1",
						Env: []corev1.EnvVar{{Name: "PW", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
							LocalObjectReference: corev1.LocalObjectReference{Name: "pw"}, Key: "pw",
						}}}},
						Ports: []corev1.ContainerPort{{ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
						Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{
							corev1.ResourceCPU:    resource.MustParse("250m"),
							corev1.ResourceMemory: resource.MustParse("64Mi"),
						}},
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
							HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromString("http")},
						}},
					}}},
			},
		},
	}
	gotDep, err := c.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{})
	if err != nil {
		fail("create deployment", err)
	}
	ctr := gotDep.Spec.Template.Spec.Containers[0]
	check("deployment answer", *gotDep.Spec.Replicas == 0 &&
		gotDep.Spec.Strategy.RollingUpdate.MaxSurge.StrVal == "50%" &&
		gotDep.Spec.Strategy.RollingUpdate.MaxUnavailable.IntVal == 1 &&
		ctr.Resources.Limits.Cpu().MilliValue() == 250 &&
		ctr.Resources.Limits.Memory().Value() == 64<<20 &&
		ctr.ReadinessProbe.HTTPGet.Port.StrVal == "http" &&
		ctr.Env[0].ValueFrom.SecretKeyRef.Name == "pw" &&
		gotDep.Spec.Template.Spec.Volumes[0].ConfigMap.Name == "conf",
		"got %+v", gotDep.Spec)

	list, err := c.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		fail("list configmaps", err)
	}
	check("list", len(list.Items) == 1 && list.Items[0].Name == "conf" && list.ResourceVersion != "", "got %+v", list)

	w, err := c.CoreV1().ConfigMaps(ns).Watch(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
	if err != nil {
		fail("watch", err)
	}
	defer w.Stop()

	got.Data["a"] = "changed"
	if _, err = c.CoreV1().ConfigMaps(ns).Update(ctx, got, metav1.UpdateOptions{}); err != nil {
		fail("update configmap", err)
	}
	patch := []byte(`{"data":{"patched":"yes"}}`)
	if _, err = c.CoreV1().ConfigMaps(ns).Patch(ctx, "conf", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		fail("patch configmap", err)
	}
	fg := metav1.DeletePropagationForeground
	if err = c.CoreV1().ConfigMaps(ns).Delete(ctx, "conf", metav1.DeleteOptions{PropagationPolicy: &fg}); err != nil {
		fail("delete configmap", err)
	}

	// Foreground deletion first marks the object (one more MODIFIED), then removes it.
	var seen []string
	for len(seen) == 0 || seen[len(seen)-1][:len(watch.Deleted)] != string(watch.Deleted) {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				fail("watch", fmt.Errorf("closed after %v", seen))
			}
			obj, isCM := ev.Object.(*corev1.ConfigMap)
			if !isCM {
				fail("watch", fmt.Errorf("event %s carries %T", ev.Type, ev.Object))
			}
			seen = append(seen, fmt.Sprintf("%s:%s", ev.Type, obj.Data["a"]+"/"+obj.Data["patched"]))
		case <-ctx.Done():
			fail("watch", fmt.Errorf("timed out after %v", seen))
		}
	}
	want := []string{
		string(watch.Modified) + ":changed/",
		string(watch.Modified) + ":changed/yes",
		string(watch.Modified) + ":changed/yes",
		string(watch.Deleted) + ":changed/yes",
	}
	check("watch events", reflect.DeepEqual(seen, want), "got %v, want %v", seen, want)

	_, err = c.CoreV1().ConfigMaps(ns).Get(ctx, "conf", metav1.GetOptions{})
	check("not found", apierrors.IsNotFound(err), "got %v", err)

	_, err = c.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "Bad_Name"}}, metav1.CreateOptions{})
	check("invalid", apierrors.IsInvalid(err), "got %v", err)
	fmt.Println("PASS")
}
