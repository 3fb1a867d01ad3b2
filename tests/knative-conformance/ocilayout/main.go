// Command ocilayout packages one static binary as an OCI image layout that `nodeless image
// import` reads, shaped like the images Knative's test images are published as (ko on a
// distroless-style static base): the binary at /ko-app/<name>, a passwd with the user `nonroot`
// (65532) that the image runs as by default (the runtime conformance test
// TestShouldRunAsUserContainerDefault expects that uid), /tmp world-writable, and
// KO_DATA_PATH set. One gzip layer, every mtime 0, so the same binary gives the same digest.
//
//	ocilayout -bin PATH -ref REFERENCE -out DIR
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

const nonroot = 65532

type entry struct {
	name     string
	mode     int64
	uid      int
	dir      bool
	contents []byte
}

func layer(name string, bin []byte) ([]byte, error) {
	entries := []entry{
		{name: "dev/", mode: 0o755, dir: true},
		{name: "etc/", mode: 0o755, dir: true},
		{name: "etc/passwd", mode: 0o644, contents: []byte(
			"root:x:0:0:root:/root:/sbin/nologin\n" +
				"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n" +
				fmt.Sprintf("nonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", nonroot, nonroot))},
		{name: "etc/group", mode: 0o644, contents: []byte(
			"root:x:0:\nnobody:x:65534:\n" + fmt.Sprintf("nonroot:x:%d:\n", nonroot))},
		{name: "home/", mode: 0o755, dir: true},
		{name: "home/nonroot/", mode: 0o700, uid: nonroot, dir: true},
		{name: "ko-app/", mode: 0o755, dir: true},
		{name: "ko-app/" + name, mode: 0o755, contents: bin},
		{name: "proc/", mode: 0o555, dir: true},
		{name: "root/", mode: 0o700, dir: true},
		{name: "sys/", mode: 0o555, dir: true},
		{name: "tmp/", mode: 0o1777, dir: true},
		{name: "var/", mode: 0o755, dir: true},
		{name: "var/run/", mode: 0o755, dir: true},
		{name: "var/run/ko/", mode: 0o755, dir: true},
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, Uid: e.uid, Gid: e.uid, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if e.dir {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.contents))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.contents); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int               `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// put writes a blob under blobs/sha256 and returns its descriptor.
func put(dir, mediaType string, b []byte) (descriptor, error) {
	d := digestOf(b)
	p := filepath.Join(dir, "blobs", "sha256", d[len("sha256:"):])
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return descriptor{}, err
	}
	return descriptor{MediaType: mediaType, Digest: d, Size: len(b)}, os.WriteFile(p, b, 0o644)
}

func marshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only plain maps and structs are marshalled
	}
	return b
}

func run(binPath, ref, out string) error {
	bin, err := os.ReadFile(binPath)
	if err != nil {
		return err
	}
	name := filepath.Base(binPath)
	tarBytes, err := layer(name, bin)
	if err != nil {
		return err
	}
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	if _, err := zw.Write(tarBytes); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	layerDesc, err := put(out, "application/vnd.oci.image.layer.v1.tar+gzip", gz.Bytes())
	if err != nil {
		return err
	}
	config := map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config": map[string]any{
			"User": fmt.Sprint(nonroot),
			"Env": []string{
				"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/ko-app",
				"KO_DATA_PATH=/var/run/ko",
			},
			"Entrypoint": []string{"/ko-app/" + name},
			"WorkingDir": "/",
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{digestOf(tarBytes)}},
	}
	configDesc, err := put(out, "application/vnd.oci.image.config.v1+json", marshal(config))
	if err != nil {
		return err
	}
	manifest := map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        configDesc,
		"layers":        []descriptor{layerDesc},
	}
	manifestDesc, err := put(out, "application/vnd.oci.image.manifest.v1+json", marshal(manifest))
	if err != nil {
		return err
	}
	manifestDesc.Annotations = map[string]string{"org.opencontainers.image.ref.name": ref}
	index := map[string]any{"schemaVersion": 2, "manifests": []descriptor{manifestDesc}}
	if err := os.WriteFile(filepath.Join(out, "index.json"), marshal(index), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(out, "oci-layout"), []byte(`{"imageLayoutVersion": "1.0.0"}`), 0o644)
}

func main() {
	bin := flag.String("bin", "", "the static binary to package")
	ref := flag.String("ref", "", "the image reference to give it, e.g. dev.local/knative-test/helloworld:conformance")
	out := flag.String("out", "", "the layout directory to write (replaced)")
	flag.Parse()
	if *bin == "" || *ref == "" || *out == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*bin, *ref, *out); err != nil {
		fmt.Fprintln(os.Stderr, "ocilayout:", err)
		os.Exit(1)
	}
}
