#!/usr/bin/env node
// Set-up that `npm test` and `npm run demo` need on a fresh Debian 12 + Node 20 machine:
// the npm dependencies and a Vulkan driver for Dawn (Mesa 25 lavapipe from
// bookworm-backports when there is no GPU driver). Uses only Node built-ins.
import { execSync } from 'node:child_process';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const run = (cmd) => execSync(cmd, { stdio: 'inherit', cwd: root });

if (!existsSync(join(root, 'node_modules', 'webgpu'))) {
  console.log('setup: installing npm dependencies (npm ci)');
  run('npm ci');
}

function vulkanIcds() {
  const dirs = ['/usr/share/vulkan/icd.d', '/etc/vulkan/icd.d'];
  return dirs.flatMap((d) => (existsSync(d) ? readdirSync(d) : []));
}

function mesaIsNewEnough() {
  try {
    const v = execSync("dpkg-query -W -f='${Version}' mesa-vulkan-drivers", { encoding: 'utf8' });
    return Number.parseInt(v, 10) >= 24;
  } catch {
    return false;
  }
}

const icds = vulkanIcds();
const hasGpuIcd = icds.some((f) => !/lvp|lavapipe/.test(f));
if (!hasGpuIcd && !mesaIsNewEnough()) {
  const isDebian = existsSync('/etc/debian_version');
  const isRoot = process.getuid?.() === 0;
  const help =
    'Dawn needs a Vulkan driver. On Debian 12 without a GPU: add bookworm-backports to apt ' +
    '(/etc/apt/sources.list.d/backports.sources) and run ' +
    '`apt-get install -y -t bookworm-backports mesa-vulkan-drivers libvulkan1` (Mesa 25; Debian 12\'s own Mesa 22 lacks what Dawn needs).';
  if (isDebian && isRoot) {
    console.log('setup: installing Mesa 25 lavapipe (CPU Vulkan driver) from bookworm-backports');
    const src = '/etc/apt/sources.list.d/backports.sources';
    if (!existsSync(src)) {
      writeFileSync(
        src,
        'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\n' +
          'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n',
      );
    }
    run('apt-get update -qq');
    run('DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1');
  } else {
    console.error(`setup: ${help}`);
    process.exit(1);
  }
}
