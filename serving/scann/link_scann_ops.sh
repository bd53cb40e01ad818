#!/usr/bin/env bash
# Links ScaNN's TensorFlow ops into a TensorFlow Serving source tree, so the built
# tensorflow_model_server can load SavedModels that contain ScaNN ops.
#
#   link_scann_ops.sh SCANN_REF [SERVING_DIR=/tensorflow-serving] [SCANN_DIR=/scann_src]
#
# Run inside the tensorflow/serving:<version>-devel image (scann/Dockerfile does). Steps:
#  1. fetch ScaNN (the scann/ folder of google-research at SCANN_REF) into SCANN_DIR;
#  2. make its Bazel targets build inside TF Serving's workspace: TensorFlow comes from
#     @org_tensorflow instead of a pip-installed TF (@local_config_tf), and the
#     Python-only pybind targets are dropped;
#  3. add a static, always-linked library of the ops and kernels (scann_ops_static);
#  4. register ScaNN as @com_google_scann and add scann_ops_static to the model
#     server's SUPPORTED_TENSORFLOW_OPS.
# Every edit is checked; the script stops with a message if upstream files changed shape.
set -euo pipefail

SCANN_REF="${1:?usage: link_scann_ops.sh SCANN_REF [SERVING_DIR] [SCANN_DIR]}"
SERVING_DIR="${2:-/tensorflow-serving}"
SCANN_DIR="${3:-/scann_src}"
OPS_TARGET="@com_google_scann//scann/scann_ops/cc:scann_ops_static"

die() { echo "link_scann_ops.sh: $*" >&2; exit 1; }

[ -f "$SERVING_DIR/WORKSPACE" ] || die "no TF Serving WORKSPACE in $SERVING_DIR"
[ -f "$SERVING_DIR/tensorflow_serving/model_servers/BUILD" ] || die "no model_servers/BUILD in $SERVING_DIR"

# 1. ScaNN sources (skipped when SCANN_DIR already holds them).
if [ ! -f "$SCANN_DIR/scann/scann_ops/cc/BUILD.bazel" ]; then
  mkdir -p "$SCANN_DIR"
  curl -sSfL --retry 5 "https://github.com/google-research/google-research/archive/${SCANN_REF}.tar.gz" \
    | tar -xz -C "$SCANN_DIR" --strip-components=2 --wildcards "*/scann/*"
fi
[ -f "$SCANN_DIR/scann/scann_ops/cc/BUILD.bazel" ] || die "ScaNN at $SCANN_REF has no scann/scann_ops/cc/BUILD.bazel"
[ -f "$SCANN_DIR/WORKSPACE" ] || touch "$SCANN_DIR/WORKSPACE"

# 2 and 3. Bazel files.
python3 - "$SCANN_DIR" <<'PY'
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1])
changed = 0
for build in root.rglob("BUILD.bazel"):
    text = build.read_text()
    new = text.replace('"@local_config_tf//:libtensorflow_framework"', '"@org_tensorflow//tensorflow/core:framework"')
    new = re.sub(r'^[ \t]*"@local_config_tf//:tf_header_lib",[ \t]*\n', "", new, flags=re.M)
    new = re.sub(r'^load\("@pybind11_bazel//:build_defs\.bzl".*\n', "", new, flags=re.M)
    new = re.sub(r'^pybind_(?:library|extension)\((?:\n(?!\)).*)*\n\)\n', "", new, flags=re.M)
    if new != text:
        build.write_text(new)
        changed += 1
ops = root / "scann/scann_ops/cc/BUILD.bazel"
text = ops.read_text()
for target in ('name = "scann_ops"', 'name = "scann_ops_kernels"'):
    if target not in text:
        sys.exit(f"{ops}: no target {target}; ScaNN's layout changed, adjust link_scann_ops.sh")
if "@local_config_tf" in "".join(p.read_text() for p in root.rglob("BUILD.bazel")):
    sys.exit("some ScaNN BUILD files still use @local_config_tf; adjust link_scann_ops.sh")
if 'name = "scann_ops_static"' not in text:
    ops.write_text(text + '''
# Added by tfrec_lm serving/scann/link_scann_ops.sh: the ops and kernels, statically
# linked into tensorflow_model_server.
cc_library(
    name = "scann_ops_static",
    visibility = ["//visibility:public"],
    deps = [
        ":scann_ops",
        ":scann_ops_kernels",
    ],
    alwayslink = 1,
)
''')
print(f"link_scann_ops.sh: adapted {changed} ScaNN BUILD files")
PY

# 4. Register the repository and link the ops.
if ! grep -q 'name = "com_google_scann"' "$SERVING_DIR/WORKSPACE"; then
  cat >> "$SERVING_DIR/WORKSPACE" <<BZL

# Added by tfrec_lm serving/scann/link_scann_ops.sh (ScaNN ${SCANN_REF}).
local_repository(
    name = "com_google_scann",
    path = "${SCANN_DIR}",
    repo_mapping = {"@eigen": "@eigen_archive"},
)
BZL
fi
BUILD_FILE="$SERVING_DIR/tensorflow_serving/model_servers/BUILD"
if ! grep -qF "$OPS_TARGET" "$BUILD_FILE"; then
  grep -q '^SUPPORTED_TENSORFLOW_OPS = ' "$BUILD_FILE" || die "no SUPPORTED_TENSORFLOW_OPS in $BUILD_FILE"
  sed -i "s|^SUPPORTED_TENSORFLOW_OPS = |SUPPORTED_TENSORFLOW_OPS = [\"${OPS_TARGET}\"] + |" "$BUILD_FILE"
fi
grep -qF "$OPS_TARGET" "$BUILD_FILE" || die "could not add $OPS_TARGET to $BUILD_FILE"
echo "link_scann_ops.sh: $OPS_TARGET linked into tensorflow_model_server (ScaNN ${SCANN_REF})"
