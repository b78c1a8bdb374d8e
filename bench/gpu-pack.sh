#!/usr/bin/env bash
# Packs what bench/gpu.sh needs on a GPU machine that has no network (Debian 12 / x86-64
# here): this Node binary, node_modules without the other platforms' Dawn builds, and the
# Debian packages of the Vulkan loader and the glvnd libraries (NVIDIA's Vulkan driver is
# libGLX_nvidia, which needs libGLdispatch). About 43 MB in .gpu-pack/ (git-ignored); carry
# that folder with the working tree and run `bash bench/gpu.sh` there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu-pack
[ -f .gpu-pack/node.xz ] || xz -T2 -6 -c "$(command -v node)" >.gpu-pack/node.xz
rm -f .gpu-pack/node_modules.tar.xz
tar -cf - --exclude='node_modules/webgpu/dist/darwin-*' --exclude='node_modules/webgpu/dist/win32-*' \
  --exclude='node_modules/webgpu/dist/linux-arm64' --exclude='node_modules/typescript' node_modules |
  xz -T2 -6 >.gpu-pack/node_modules.tar.xz
(cd .gpu-pack && apt-get download libvulkan1 libglvnd0 libglx0 libegl1 libgl1 libopengl0 libgles2 2>&1 | grep -v unsandboxed || true)
du -sh .gpu-pack
