/** The dependency set and the deployable bundle: the pinned exporter, imports vs dependencies, lazy node-forge, a bundle that needs no node_modules, npm start. */
import { execFile } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { builtinModules, createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import forge from 'node-forge';
import ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCertificateAuthority } from '../../sandbox/ca';

const run = promisify(execFile);
const root = path.resolve(__dirname, '../..');
const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as {
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
  scripts: Record<string, string>;
};
const EXPORTER = '@azure/monitor-opentelemetry-exporter';
const tempDirs: string[] = [];

function tempDir(prefix: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  tempDirs.push(dir);
  return dir;
}

/** The package.json of an installed package, read from disk (some packages do not export ./package.json). */
function installedPackage(name: string, from = root): { version: string; dependencies?: Record<string, string> } {
  let dir = path.dirname(createRequire(path.join(from, 'index.js')).resolve(name));
  while (!existsSync(path.join(dir, 'package.json')) || !isPackageRoot(dir, name)) dir = path.dirname(dir);
  return JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as { version: string };
}
function isPackageRoot(dir: string, name: string): boolean {
  try {
    return (JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string }).name === name;
  } catch {
    return false;
  }
}

afterAll(() => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

describe('the telemetry exporter', () => {
  it('is pinned to an exact version, and that version is the one installed', () => {
    const spec = pkg.dependencies[EXPORTER]!;
    // Any range would let a re-lock pick the registry's `latest` (1.0.0-preview.6), which has no log or metric exporter.
    expect(spec).toMatch(/^\d+\.\d+\.\d+(-[0-9A-Za-z.]+)?$/);
    expect(installedPackage(EXPORTER).version).toBe(spec);
  });

  it('has every export src/telemetry.ts uses, and shares one copy of each OpenTelemetry package with the app', () => {
    const require = createRequire(path.join(root, 'index.js'));
    const exporter = require(EXPORTER) as Record<string, unknown>;
    expect(typeof exporter.AzureMonitorLogExporter).toBe('function');
    expect(typeof exporter.AzureMonitorMetricExporter).toBe('function');
    const logs = require('@opentelemetry/sdk-logs') as Record<string, unknown>;
    const metrics = require('@opentelemetry/sdk-metrics') as Record<string, unknown>;
    const resources = require('@opentelemetry/resources') as Record<string, unknown>;
    for (const fn of [
      logs.LoggerProvider,
      logs.BatchLogRecordProcessor,
      metrics.MeterProvider,
      metrics.PeriodicExportingMetricReader,
      resources.resourceFromAttributes,
    ]) {
      expect(typeof fn).toBe('function');
    }
    // The exporter resolves the same files as the app: a LoggerProvider built here is the class it was built for.
    const exporterDir = path.dirname(require.resolve(EXPORTER));
    const otel = Object.keys(installedPackage(EXPORTER).dependencies ?? {}).filter((n) =>
      n.startsWith('@opentelemetry/'),
    );
    expect(otel.length).toBeGreaterThan(3);
    for (const name of otel) {
      expect(createRequire(path.join(exporterDir, 'x.js')).resolve(name), name).toBe(require.resolve(name));
    }
  });
});

/** Every bare package imported (import, import type, import(), require) by the .ts files under `dirs`. */
function importedPackages(dirs: string[]): Map<string, string[]> {
  const used = new Map<string, string[]>();
  for (const dir of dirs) {
    for (const file of readdirSync(path.join(root, dir), { recursive: true }).map(String)) {
      if (!file.endsWith('.ts')) continue;
      const full = path.join(root, dir, file);
      const { importedFiles } = ts.preProcessFile(readFileSync(full, 'utf8'), true, true);
      for (const { fileName } of importedFiles) {
        if (fileName.startsWith('.') || fileName.startsWith('node:') || builtinModules.includes(fileName)) continue;
        const parts = fileName.split('/');
        const name = fileName.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]!;
        used.set(name, [...(used.get(name) ?? []), path.join(dir, file)]);
      }
    }
  }
  return used;
}

describe('dependencies match what the deployed code imports', () => {
  it('every package src/ and functions/ import is a dependency, and every dependency is imported by them', () => {
    const used = importedPackages(['src', 'functions']);
    const deps = Object.keys(pkg.dependencies);
    expect([...used.keys()].filter((name) => !deps.includes(name)).sort()).toEqual([]);
    expect(deps.filter((name) => !used.has(name)).sort()).toEqual([]);
  });

  it('jose and croner, used only by the sandbox and the dev host, are devDependencies', () => {
    const devOnly = importedPackages(['sandbox', 'dev']);
    for (const name of ['jose', 'croner']) {
      expect(devOnly.has(name), name).toBe(true);
      expect(pkg.dependencies[name], name).toBeUndefined();
      expect(pkg.devDependencies[name], name).toBeDefined();
    }
  });
});

describe('node-forge is loaded only for a PFX certificate', () => {
  it('importing src/sender/smtpAuth.ts and parsing a PEM certificate do not load it; parsing a PFX does', async () => {
    const issued = createCertificateAuthority('forge test CA').issueClient('forge-test');
    const key = forge.pki.privateKeyFromPem(issued.keyPem);
    const cert = forge.pki.certificateFromPem(issued.certPem);
    // Key Vault hands out a PFX certificate's secret as base64 with no password.
    const pfx = forge.util.encode64(
      forge.asn1.toDer(forge.pkcs12.toPkcs12Asn1(key, [cert], '', { algorithm: '3des' })).getBytes(),
    );
    const dir = tempDir('forge-');
    const input = path.join(dir, 'input.json');
    writeFileSync(input, JSON.stringify({ pem: `${issued.keyPem}\n${issued.certPem}`, pfx }));
    const script = `
      const loaded = () => Object.keys(require.cache).some((f) => /[\\\\/]node_modules[\\\\/]node-forge[\\\\/]/.test(f));
      const { pem, pfx } = JSON.parse(require('node:fs').readFileSync(${JSON.stringify(input)}, 'utf8'));
      const { parseCertificateSecret } = require('./src/sender/smtpAuth.ts');
      const afterImport = loaded();
      const fromPem = parseCertificateSecret(pem, 'application/x-pem-file');
      const afterPem = loaded();
      const fromPfx = parseCertificateSecret(pfx, 'application/x-pkcs12');
      console.log(JSON.stringify({ afterImport, afterPem, afterPfx: loaded(),
        same: fromPem.thumbprintSha256 === fromPfx.thumbprintSha256, thumbprint: fromPfx.thumbprintSha256 }));`;
    const { stdout } = await run(process.execPath, ['--require', 'tsx/cjs', '-e', script], { cwd: root });
    const result = JSON.parse(stdout.trim().split('\n').pop()!) as Record<string, unknown>;
    expect(result).toMatchObject({ afterImport: false, afterPem: false, afterPfx: true, same: true });
    expect(result.thumbprint).toMatch(/^[0-9A-F]{64}$/);
  });
});

describe('the deployment package', () => {
  beforeAll(async () => {
    await run(process.execPath, ['scripts/build.mjs'], { cwd: root });
  }, 120_000);

  it('.funcignore leaves node_modules out and keeps dist/', () => {
    const lines = readFileSync(path.join(root, '.funcignore'), 'utf8')
      .split('\n')
      .map((l) => l.trim());
    expect(lines.some((l) => /^\/?node_modules\/?$/.test(l))).toBe(true);
    expect(lines).toContain('!dist/**');
    expect(lines).not.toContain('dist');
  });

  it('each bundle file holds one copy of each package, but for two majors that dependencies require', () => {
    // esbuild's record of the files each output holds (source maps would name some packages' own sources instead).
    const meta = JSON.parse(readFileSync(path.join(root, 'dist/meta.json'), 'utf8')) as {
      outputs: Record<string, { inputs: Record<string, unknown> }>;
    };
    const copiesIn = (file: string) => {
      const copies = new Map<string, Set<string>>();
      for (const source of Object.keys(meta.outputs[`dist/functions/${file}`]?.inputs ?? {})) {
        const at = source.lastIndexOf('node_modules/');
        if (at < 0) continue;
        const parts = source.slice(at + 'node_modules/'.length).split('/');
        const name = parts[0]!.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]!;
        copies.set(name, (copies.get(name) ?? new Set()).add(source.slice(0, at) + name));
      }
      return copies;
    };
    const duplicated = (copies: Map<string, Set<string>>) =>
      [...copies].filter(([, roots]) => roots.size > 1).map(([name]) => name);
    const app = copiesIn('app.js');
    const sendPath = copiesIn('sendPath.js');
    // htmlparser2 10 needs entities 7; dom-serializer, which html-to-text also uses, is on entities 4.
    expect(duplicated(app)).toEqual(['entities']);
    // @azure/identity 4.13 depends on msal-node ^5 while the app uses msal-node 7; identity 4.14 needs Node 22.
    expect(duplicated(sendPath)).toEqual(['@azure/msal-node']);
    expect(sendPath.has('@opentelemetry/api')).toBe(true);
    expect(sendPath.has('node-forge')).toBe(true);
    expect(app.has('@azure/msal-node')).toBe(false);
  });

  it('the bundle files require nothing but Node built-ins, the host-provided @azure/functions-core and each other', () => {
    const outside = (file: string) => {
      const bundle = readFileSync(path.join(root, `dist/functions/${file}`), 'utf8');
      const required = new Set([...bundle.matchAll(/\brequire\("([^"]+)"\)/g)].map((m) => m[1]!));
      return [...required].filter(
        (name) => !name.startsWith('node:') && !builtinModules.includes(name) && name !== '@azure/functions-core',
      );
    };
    expect(outside('app.js')).toEqual(['./sendPath.js']);
    expect(outside('index.js')).toEqual([]);
    expect(outside('sendPath.js')).toEqual([]);
  });

  it('dist/, host.json and package.json alone (no node_modules) load, register every function and answer a request', async () => {
    const app = tempDir('deploy-');
    cpSync(path.join(root, 'dist'), path.join(app, 'dist'), { recursive: true });
    for (const file of ['host.json', 'package.json']) cpSync(path.join(root, file), path.join(app, file));
    // Nothing above the temp directory may supply packages either.
    for (let dir = app; dir !== path.dirname(dir); dir = path.dirname(dir)) {
      expect(existsSync(path.join(dir, 'node_modules')), dir).toBe(false);
    }
    const entry = path.join(app, 'dist/functions/index.js');
    const script = `
      const Module = require('node:module');
      const entry = ${JSON.stringify(entry)};
      // The entry loads app.js, which requires sendPath.js on first use.
      const bundleFiles = ['index.js', 'app.js', 'sendPath.js'].map((f) => require('node:path').join(require('node:path').dirname(entry), f));
      const fromBundle = [];
      const resolve = Module._resolveFilename;
      Module._resolveFilename = function (request, parent, ...rest) {
        if (parent && bundleFiles.includes(parent.filename)) fromBundle.push(request);
        return resolve.call(this, request, parent, ...rest);
      };
      const { captureRegistrations } = require(${JSON.stringify(path.join(root, 'dev/functionsCore.ts'))});
      const { Invoker } = require(${JSON.stringify(path.join(root, 'dev/invoker.ts'))});
      const { normalise } = require(${JSON.stringify(path.join(root, 'dev/registrations.ts'))});
      const registrations = captureRegistrations(() => require(entry));
      const fns = registrations.functions.map((f) => normalise(f.metadata, f.callback, process.env));
      const preview = fns.find((f) => f.kind === 'http' && f.route === 'templates/{name}/preview');
      new Invoker(registrations, () => {}).invoke(preview, {
        trigger: { http: { method: 'GET', url: 'http://127.0.0.1:7071/api/templates/notification/preview',
          headers: {}, query: {}, params: { name: 'notification' } } },
      }).then((response) => {
        const http = response.returnValue && response.returnValue.http;
        console.log(JSON.stringify({ names: fns.map((f) => f.name), status: Number(http && http.statusCode),
          requests: fromBundle.length, outside: fromBundle.filter((r) => !r.startsWith('node:') && !Module.isBuiltin(r) && !bundleFiles.includes(require('node:path').resolve(require('node:path').dirname(entry), r))) }));
        process.exit(0);
      }, (error) => { console.error(error); process.exit(1); });`;
    const env: Record<string, string> = {
      PATH: process.env.PATH ?? '',
      MAIL_SENDER: 'alerts@contoso.com',
      MAIL_TENANT_ID: '11111111-2222-3333-4444-555555555555',
      MAIL_CLIENT_ID: '11111111-2222-3333-4444-555555555555',
      MAIL_KEY_VAULT_URL: 'https://vault1.vault.azure.net',
      AzureWebJobsStorage: 'UseDevelopmentStorage=true',
      WEBSITE_INSTANCE_ID: 'deploy-test',
    };
    const { stdout } = await run(
      process.execPath,
      ['--require', path.join(root, 'node_modules/tsx/dist/cjs/index.cjs'), '-e', script],
      { cwd: app, env },
    );
    const result = JSON.parse(stdout.trim().split('\n').pop()!) as {
      names: string[];
      status: number;
      requests: number;
      outside: string[];
    };
    expect(result.names.length).toBeGreaterThanOrEqual(10);
    expect(result.names).toContain('templatesPreview');
    expect(result.status).toBe(200);
    // Every module the bundle asked Node for was a built-in or one of its own files (the stand-in answers @azure/functions-core before
    // this hook sees it, as the host does).
    expect(result.requests).toBeGreaterThan(10);
    expect(result.outside).toEqual([]);
  });

  it('npm start builds the bundle, then runs func start; installing never needs Core Tools', async () => {
    const bin = tempDir('fake-func-');
    const record = path.join(bin, 'record.txt');
    const bundle = path.join(root, 'dist/functions/index.js');
    // A stand-in for Core Tools that records its arguments and the bundle's age when it starts.
    writeFileSync(
      path.join(bin, 'func'),
      `#!/bin/sh\necho "$@ $(node -e 'console.log(require("fs").statSync(process.argv[1]).mtimeMs)' ${bundle})" > ${record}\n`,
      { mode: 0o755 },
    );
    const before = statSync(bundle).mtimeMs;
    await new Promise((resolve) => setTimeout(resolve, 20));
    await run('npm', ['start', '--silent'], { cwd: root, env: { ...process.env, PATH: `${bin}:${process.env.PATH}` } });
    const [args, mtime] = readFileSync(record, 'utf8').trim().split(' ');
    expect(args).toBe('start');
    expect(Number(mtime)).toBeGreaterThan(before);
    for (const script of ['preinstall', 'install', 'postinstall', 'prepare']) {
      expect(pkg.scripts[script] ?? '', script).not.toMatch(/\bfunc\b/);
    }
  }, 120_000);
});
