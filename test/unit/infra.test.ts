/**
 * Offline checks of the Azure templates against the code: every setting the Config reads, every storage name, every
 * queue a trigger listens on, the roles, the API versions and the module wiring. The Bicep compiler is not available
 * here; the CI workflow compiles and previews the templates (docs/deploy.md says which check runs where).
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { require as tsxRequire } from 'tsx/cjs/api';
import { describe, expect, it } from 'vitest';
import { captureRegistrations } from '../../dev/functionsCore';
import { normalise } from '../../dev/registrations';
import { DEFAULT_MAX_CONNECTIONS, loadConfig, SETTING_NAMES, type Config } from '../../src/config';
import * as storageNames from '../../src/storage/storageClients';
import {
  BicepSyntaxError,
  declaration,
  findProperty,
  objectEntries,
  parseBicep,
  stringArray,
  text,
  tokenize,
  unresolvedNames,
  unusedParams,
  type BicepFile,
} from '../support/bicep';

const ROOT = path.resolve(__dirname, '../..');
const INFRA = path.join(ROOT, 'infra');
const bicepFiles = [
  path.join(INFRA, 'main.bicep'),
  ...readdirSync(path.join(INFRA, 'app'))
    .filter((f) => f.endsWith('.bicep'))
    .map((f) => path.join(INFRA, 'app', f)),
];
const parsed = new Map<string, BicepFile>(bicepFiles.map((f) => [f, parseBicep(f)]));
const main = parsed.get(path.join(INFRA, 'main.bicep'))!;
const app = (name: string) => parsed.get(path.join(INFRA, 'app', `${name}.bicep`))!;

/**
 * Settings the templates leave out on purpose: test-only knobs (an extra CA for the sandbox, time scaled down for
 * tests), and the connection-string form of storage, replaced by the identity-based settings.
 */
const NOT_DEPLOYED = new Set([
  'MAIL_TLS_CA_FILE',
  'MAIL_RATE_WINDOW_SECONDS',
  'MAIL_DAILY_WINDOW_SECONDS',
  'AzureWebJobsStorage',
]);

/** Built-in role definition ids (identical in every tenant) and their names. */
const BUILT_IN_ROLES: Record<string, string> = {
  'b7e6dc6d-f1e8-4753-8033-0f276bb0955b': 'Storage Blob Data Owner',
  'ba92f5b4-2d11-453d-a403-e96b0029c9fe': 'Storage Blob Data Contributor',
  '974c5e8b-45b9-4653-ba55-5f855dd0fb88': 'Storage Queue Data Contributor',
  '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3': 'Storage Table Data Contributor',
  '4633458b-17de-408a-b874-0445c86b69e6': 'Key Vault Secrets User',
  'b86a8fe4-44ce-4948-aee5-eccb2c155cd7': 'Key Vault Secrets Officer',
  '3913510d-42f4-4e42-8a64-420c390055eb': 'Monitoring Metrics Publisher',
};

/** Resource types and the API versions the templates may use (all generally available). */
const API_VERSIONS: Record<string, string[]> = {
  'Microsoft.Resources/resourceGroups': ['2024-03-01'],
  'Microsoft.ManagedIdentity/userAssignedIdentities': ['2023-01-31'],
  'Microsoft.Storage/storageAccounts': ['2023-05-01'],
  'Microsoft.Storage/storageAccounts/blobServices': ['2023-05-01'],
  'Microsoft.Storage/storageAccounts/blobServices/containers': ['2023-05-01'],
  'Microsoft.Storage/storageAccounts/queueServices': ['2023-05-01'],
  'Microsoft.Storage/storageAccounts/queueServices/queues': ['2023-05-01'],
  'Microsoft.Storage/storageAccounts/tableServices': ['2023-05-01'],
  'Microsoft.Storage/storageAccounts/tableServices/tables': ['2023-05-01'],
  'Microsoft.Storage/storageAccounts/managementPolicies': ['2023-05-01'],
  'Microsoft.KeyVault/vaults': ['2023-07-01'],
  'Microsoft.OperationalInsights/workspaces': ['2023-09-01'],
  'Microsoft.Insights/components': ['2020-02-02'],
  'Microsoft.Web/serverfarms': ['2024-04-01'],
  'Microsoft.Web/sites': ['2024-04-01'],
  'Microsoft.Authorization/roleAssignments': ['2022-04-01'],
};

/** App settings Flex Consumption refuses or ignores: the runtime and package come from functionAppConfig. */
const FLEX_REFUSED = [
  'FUNCTIONS_WORKER_RUNTIME',
  'FUNCTIONS_EXTENSION_VERSION',
  'WEBSITE_NODE_DEFAULT_VERSION',
  'WEBSITE_RUN_FROM_PACKAGE',
  'WEBSITE_CONTENTAZUREFILECONNECTIONSTRING',
  'WEBSITE_CONTENTSHARE',
];

/** Every app setting the templates give the Function App: main.bicep's mailSettings plus api.bicep's platformSettings. */
function deployedSettings(): Map<string, string> {
  const settings = new Map<string, string>();
  for (const { key, value } of objectEntries(declaration(main, 'var', 'mailSettings').body)) {
    settings.set(key, text(value));
  }
  for (const { key, value } of objectEntries(declaration(app('api'), 'var', 'platformSettings').body)) {
    settings.set(key, text(value));
  }
  return settings;
}

/** The default of a main.bicep param, as the literal it is (strings unquoted). */
function paramDefault(name: string): string | undefined {
  const body = declaration(main, 'param', name).body;
  if (body.length === 0) return undefined;
  expect(body, `param ${name} default is one literal`).toHaveLength(1);
  return body[0]!.value ?? body[0]!.text;
}

describe('the Bicep files parse and resolve', () => {
  it.each(bicepFiles.map((f) => path.relative(ROOT, f)))(
    '%s: every name used is declared, every param is used',
    (file) => {
      const bicep = parsed.get(path.join(ROOT, file))!;
      expect(bicep.declarations.length).toBeGreaterThan(0);
      expect(unresolvedNames(bicep)).toEqual([]);
      expect(unusedParams(bicep)).toEqual([]);
      // Names are unique within a file (outputs have a namespace of their own).
      for (const outputs of [false, true]) {
        const names = bicep.declarations
          .filter((d) => d.keyword !== 'targetScope' && (d.keyword === 'output') === outputs)
          .map((d) => d.name);
        expect(new Set(names).size, outputs ? 'outputs' : 'declarations').toBe(names.length);
      }
    },
  );

  it('the reader is strict: unbalanced brackets, unterminated strings, unknown names and unused params are caught', () => {
    expect(() => tokenize("var a = {\n  b: 'x'\n", 'bad.bicep')).toThrow(BicepSyntaxError);
    expect(() => tokenize("var a = 'open\n", 'bad.bicep')).toThrow(/unterminated|cannot span/);
    expect(() => tokenize("var a = '${b'\n", 'bad.bicep')).toThrow(BicepSyntaxError);
    expect(() => tokenize('var a = [1, 2)\n', 'bad.bicep')).toThrow(/unbalanced/);
    const typo = parseBicep(
      'typo.bicep',
      "param storageName string\nparam unused int = 1\nvar x = '${storagName}-x'\n",
    );
    expect(unresolvedNames(typo)).toEqual(['storagName (line 3)']);
    expect(unusedParams(typo)).toEqual(['storageName', 'unused']);
    const ok = parseBicep(
      'ok.bicep',
      "param items2 array\nvar y = [for (item, i) in items2: { name: item.name, index: i }]\nvar z = map(items2, v => v.id)\nvar w = '${toLower('A}')}-${length(items2)}'\n",
    );
    expect(unresolvedNames(ok)).toEqual([]);
  });

  it('resource types use known, generally available API versions; each type is used with one version', () => {
    const seen = new Map<string, Set<string>>();
    for (const bicep of parsed.values()) {
      for (const d of bicep.declarations.filter((d) => d.keyword === 'resource')) {
        const [type, version] = (d.typeOrPath ?? '').split('@');
        expect(API_VERSIONS[type!], `${path.basename(bicep.file)}: ${d.typeOrPath}`).toContain(version);
        seen.set(type!, (seen.get(type!) ?? new Set()).add(version!));
      }
    }
    for (const [type, versions] of seen) expect([...versions], type).toHaveLength(1);
  });

  it('every module file exists; the params passed are declared there, the required ones are passed, the outputs used exist', () => {
    for (const bicep of parsed.values()) {
      for (const mod of bicep.declarations.filter((d) => d.keyword === 'module')) {
        const file = path.resolve(path.dirname(bicep.file), mod.typeOrPath ?? '');
        expect(existsSync(file), `${mod.name}: ${mod.typeOrPath}`).toBe(true);
        const target = parsed.get(file)!;
        const declared = target.declarations.filter((d) => d.keyword === 'param');
        const passed = objectEntries(findProperty(mod.body, 'params') ?? []).map((e) => e.key);
        expect(passed.filter((p) => !declared.some((d) => d.name === p))).toEqual([]);
        const required = declared.filter((d) => d.body.length === 0).map((d) => d.name);
        expect(
          required.filter((r) => !passed.includes(r)),
          `${mod.name} is missing`,
        ).toEqual([]);
        // Every `<module>.outputs.<name>` used anywhere in this file is an output of the module.
        const outputs = new Set(target.declarations.filter((d) => d.keyword === 'output').map((d) => d.name));
        bicep.tokens.forEach((t, i) => {
          if (t.text === mod.name && bicep.tokens[i + 1]?.text === '.' && bicep.tokens[i + 2]?.text === 'outputs') {
            const output = bicep.tokens[i + 4]!.text;
            expect(outputs.has(output), `${mod.name}.outputs.${output}`).toBe(true);
          }
        });
      }
    }
  });

  it('main.parameters.json sets only params main.bicep declares, and every param without a default', () => {
    const json = JSON.parse(readFileSync(path.join(INFRA, 'main.parameters.json'), 'utf8')) as {
      parameters: Record<string, { value: string }>;
    };
    const params = main.declarations.filter((d) => d.keyword === 'param');
    const names = params.map((d) => d.name);
    expect(Object.keys(json.parameters).filter((k) => !names.includes(k))).toEqual([]);
    const required = params.filter((d) => d.body.length === 0).map((d) => d.name);
    expect(required.filter((r) => !(r in json.parameters))).toEqual([]);
    // azd substitutes ${VAR} and ${VAR=default}; a default there must agree with the Bicep default.
    for (const [name, { value }] of Object.entries(json.parameters)) {
      const m = /^\$\{[A-Z_]+(?:=(.*))?\}$/.exec(value);
      expect(m, `${name}: ${value}`).not.toBeNull();
      if (m?.[1] !== undefined) expect(m[1], name).toBe(paramDefault(name) ?? '');
    }
  });
});

describe('the Function App gets every setting the app reads', () => {
  const settings = deployedSettings();

  it('every Config setting is deployed, except the test-only and not-yet-built ones; nothing unknown is set', () => {
    const wanted = SETTING_NAMES.filter((name) => !NOT_DEPLOYED.has(name));
    expect(wanted.filter((name) => !settings.has(name))).toEqual([]);
    const known = new Set<string>(SETTING_NAMES);
    const identityStorage =
      /^AzureWebJobsStorage__(credential|clientId|blobServiceUri|queueServiceUri|tableServiceUri)$/;
    expect([...settings.keys()].filter((k) => !known.has(k) && !identityStorage.test(k))).toEqual([]);
    expect([...settings.keys()].filter((k) => NOT_DEPLOYED.has(k))).toEqual([]);
  });

  it('storage is identity-based only: credential, client id and the three service URIs, the identity everywhere', () => {
    expect(settings.get('AzureWebJobsStorage__credential')).toBe("'managedidentity'");
    for (const service of ['blob', 'queue', 'table']) {
      expect(settings.get(`AzureWebJobsStorage__${service}ServiceUri`)).toBe(
        `storageAccount.properties.primaryEndpoints.${service}`,
      );
    }
    expect(settings.get('AzureWebJobsStorage__clientId')).toBe('identityClientId');
    expect(settings.get('AZURE_CLIENT_ID')).toBe('identityClientId');
    // The app's exporter and the host both authenticate telemetry with the same identity.
    expect(settings.get('APPLICATIONINSIGHTS_AUTHENTICATION_STRING')).toBe(
      "'Authorization=AAD;ClientId=${identityClientId}'",
    );
    for (const refused of FLEX_REFUSED) expect(settings.has(refused), refused).toBe(false);
    expect(readFileSync(path.join(INFRA, 'app', 'storage.bicep'), 'utf8')).toMatch(/allowSharedKeyAccess: false/);
  });

  it('each MAIL_* setting comes from a param whose default is the app’s own default', () => {
    const base = {
      MAIL_SENDER: 'alerts@contoso.com',
      MAIL_TENANT_ID: '00000000-0000-4000-8000-000000000001',
      MAIL_CLIENT_ID: '00000000-0000-4000-8000-000000000002',
      MAIL_KEY_VAULT_URL: 'https://v.vault.azure.net',
    };
    const config: Config = loadConfig(base);
    const auth = (mode: string) => loadConfig({ ...base, MAIL_AUTH_MODE: mode }).auth as Record<string, unknown>;
    const appDefaults: Record<string, string> = {
      MAIL_AUTH_MODE: config.auth.mode,
      MAIL_CLIENT_SECRET_NAME: String(auth('client-secret').clientSecretName),
      MAIL_CLIENT_CERT_NAME: String(auth('client-certificate').clientCertName),
      MAIL_PASSWORD_SECRET_NAME: String(auth('basic').passwordSecretName),
      MAIL_AUTHORITY_HOST: config.authorityHost,
      MAIL_SMTP_HOST: config.smtp.host,
      MAIL_SMTP_PORT: String(config.smtp.port),
      MAIL_SMTP_SCOPE: String(auth('client-secret').scope),
      MAIL_RATE_PER_MINUTE: String(config.limits.ratePerMinute),
      MAIL_MAX_CONNECTIONS: String(config.limits.maxConnections),
      MAIL_DAILY_RECIPIENT_LIMIT: String(config.limits.dailyRecipientLimit),
      MAIL_MAX_RECIPIENTS: String(config.limits.maxRecipients),
      MAIL_MAX_MESSAGE_BYTES: String(config.limits.maxMessageBytes),
      MAIL_PACING: config.limits.pacing ? 'on' : 'off',
      MAIL_SEND_LEASE_SECONDS: String(config.sendLeaseMs / 1000),
      MAIL_RETENTION_DAYS: String(config.retentionMs / 86_400_000),
      MAIL_UNSUBSCRIBE_KEY_NAME: config.unsubscribe.keyName,
      // Unset in the app (bulk mail refused until it is set): an empty string in the templates.
      MAIL_UNSUBSCRIBE_BASE_URL: config.unsubscribe.baseUrl ?? '',
    };
    for (const [setting, expected] of Object.entries(appDefaults)) {
      const expression = settings.get(setting);
      const param = /^(?:string\()?([A-Za-z]+)\)?$/.exec(expression ?? '')?.[1];
      expect(param, `${setting} = ${expression}`).toBeDefined();
      expect(paramDefault(param!), `${setting} (param ${param})`).toBe(expected);
    }
    // Required by the app, so no default: the user sets them (azd env set).
    expect(paramDefault('mailSender')).toBeUndefined();
    expect(settings.get('MAIL_KEY_VAULT_URL')).toBe('keyVault.outputs.uri');
  });

  it('the maximum instance count defaults to the mailbox’s SMTP session limit, and the runtime is Node 22', () => {
    expect(paramDefault('maximumInstanceCount')).toBe(String(DEFAULT_MAX_CONNECTIONS));
    const site = declaration(app('api'), 'resource', 'site').body;
    expect(text(findProperty(site, 'maximumInstanceCount')!)).toBe('maximumInstanceCount');
    expect(text(findProperty(findProperty(site, 'runtime')!, 'version')!)).toBe("'22'");
    expect(text(findProperty(findProperty(site, 'runtime')!, 'name')!)).toBe("'node'");
    const plan = declaration(app('api'), 'resource', 'plan').body;
    expect(text(findProperty(plan, 'tier')!)).toBe("'FlexConsumption'");
  });
});

describe('storage, roles and retention match the code', () => {
  const storage = app('storage');
  const codeNames = (suffix: string) =>
    Object.entries(storageNames)
      .filter(([key, value]) => key.endsWith(suffix) && typeof value === 'string')
      .map(([, value]) => value as string)
      .sort();

  it('the queues, tables and containers the templates create are exactly those of src/storage/storageClients.ts', () => {
    expect(stringArray(declaration(storage, 'var', 'queueNames').body).sort()).toEqual(codeNames('_QUEUE'));
    expect(stringArray(declaration(storage, 'var', 'tableNames').body).sort()).toEqual(codeNames('_TABLE'));
    expect(stringArray(declaration(storage, 'var', 'containerNames').body).sort()).toEqual(codeNames('_CONTAINER'));
  });

  it('every queue a registered trigger listens on is created, on the identity-based AzureWebJobsStorage connection', () => {
    const registrations = captureRegistrations(() => {
      tsxRequire(path.join(ROOT, 'functions/index.ts'), __filename);
    });
    const functions = registrations.functions.map((f) => normalise(f.metadata, f.callback, process.env));
    const queues = functions.flatMap((f) => (f.kind === 'queue' ? [f] : []));
    expect(queues.length).toBeGreaterThanOrEqual(4);
    const created = stringArray(declaration(storage, 'var', 'queueNames').body);
    for (const q of queues) {
      expect(created, q.name).toContain(q.queueName);
      expect(q.connection, q.name).toBe(storageNames.STORAGE_SETTING);
    }
    // Timers need the host's blob leases; HTTP functions need nothing of storage: both are covered by the roles below.
    expect(functions.some((f) => f.kind === 'timer')).toBe(true);
  });

  it('lifecycle rules delete payload and batch blobs a week after MAIL_RETENTION_DAYS, from the same param', () => {
    const policy = declaration(storage, 'resource', 'lifecycle').body;
    const prefixes: string[] = [];
    policy.forEach((t, i) => {
      if (t.text !== 'prefixMatch') return;
      const end = policy.findIndex((u, j) => j > i && u.text === ']');
      prefixes.push(...stringArray(policy.slice(i + 2, end)));
    });
    expect(prefixes.sort()).toEqual([`${storageNames.BATCH_CONTAINER}/`, `${storageNames.PAYLOAD_CONTAINER}/`]);
    const days = policy.filter((t) => t.text === 'daysAfterModificationGreaterThan');
    expect(days).toHaveLength(2);
    policy.forEach((t, i) => {
      if (t.text === 'daysAfterModificationGreaterThan')
        expect(text(policy.slice(i + 2, i + 5))).toBe('retentionDays + 7');
    });
    const storageModule = declaration(main, 'module', 'storage').body;
    expect(text(findProperty(storageModule, 'retentionDays')!)).toBe('mailRetentionDays');
    expect(deployedSettings().get('MAIL_RETENTION_DAYS')).toBe('string(mailRetentionDays)');
  });

  it('the identity gets exactly the data roles the host and the app need, each on its resource; role ids are the built-in ones', () => {
    const rbac = app('rbac');
    const roles = new Map(
      objectEntries(declaration(rbac, 'var', 'roles').body).map((e) => [e.key, e.value[0]?.value ?? '']),
    );
    for (const [key, id] of roles) expect(BUILT_IN_ROLES[id], `${key} ${id}`).toBeDefined();
    const nameOf = (key: string) => BUILT_IN_ROLES[roles.get(key) ?? ''];

    const storageRoles = text(declaration(rbac, 'var', 'storageRoles').body).match(/roles\.(\w+)/g)!;
    expect(storageRoles.map((r) => nameOf(r.slice(6))).sort()).toEqual([
      'Storage Blob Data Owner',
      'Storage Queue Data Contributor',
      'Storage Table Data Contributor',
    ]);
    const assignments = rbac.declarations.filter((d) =>
      d.typeOrPath?.startsWith('Microsoft.Authorization/roleAssignments'),
    );
    // A role by its key in `roles`; the storage loop assigns each of `storageRoles` through its loop variable.
    const byRole = (d: (typeof assignments)[number]) => {
      const definition = text(findProperty(d.body, 'roleDefinitionId')!);
      return /roles\.(\w+)/.exec(definition)?.[1] ?? (/\broleId\)$/.test(definition) ? 'roleId' : definition);
    };
    const identityAssignments = assignments
      .filter((d) => text(findProperty(d.body, 'principalId')!) === 'identityPrincipalId')
      .map((d) => ({ role: byRole(d), scope: text(findProperty(d.body, 'scope')!) }));
    expect(identityAssignments).toEqual(
      expect.arrayContaining([
        { role: 'roleId', scope: 'storageAccount' },
        { role: 'keyVaultSecretsUser', scope: 'vault' },
        { role: 'monitoringMetricsPublisher', scope: 'appInsights' },
      ]),
    );
    expect(identityAssignments).toHaveLength(3);
    // The deployer only writes secrets, and only when azd knows who they are.
    const deployer = assignments.filter((d) => text(findProperty(d.body, 'principalId')!) === 'deployerPrincipalId');
    expect(deployer.map(byRole)).toEqual(['keyVaultSecretsOfficer']);
    expect(text(deployer[0]!.body)).toMatch(/^if\(!empty\(deployerPrincipalId\)\)/);
  });

  it('Key Vault uses RBAC with purge protection; Application Insights and Log Analytics refuse key-based ingestion', () => {
    const vault = declaration(app('keyvault'), 'resource', 'vault').body;
    expect(text(findProperty(vault, 'enableRbacAuthorization')!)).toBe('true');
    expect(text(findProperty(vault, 'enablePurgeProtection')!)).toBe('true');
    const monitoring = app('monitoring');
    expect(text(findProperty(declaration(monitoring, 'resource', 'appInsights').body, 'DisableLocalAuth')!)).toBe(
      'true',
    );
    expect(text(findProperty(declaration(monitoring, 'resource', 'workspace').body, 'disableLocalAuth')!)).toBe('true');
  });
});

describe('azd and the package', () => {
  it('azure.yaml deploys service api as a js function from the repository root; the bundle is what .funcignore keeps', () => {
    const yaml = readFileSync(path.join(ROOT, 'azure.yaml'), 'utf8');
    expect(yaml).toMatch(/^services:\n {2}api:\n {4}project: \.\n {4}language: js\n {4}host: function\n/m);
    const funcignore = readFileSync(path.join(ROOT, '.funcignore'), 'utf8').split('\n');
    expect(funcignore).toEqual(expect.arrayContaining(['node_modules', 'src', '!dist/**']));
    const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
      main: string;
      scripts: Record<string, string>;
    };
    expect(pkg.main).toBe('dist/functions/index.js');
    expect(pkg.scripts.build).toBeDefined();
  });

  it('the workflow tests on Node 20 and 22, compiles and previews the templates, and deploys only main, over OIDC, with no secret', () => {
    const workflow = readFileSync(path.join(ROOT, '.github', 'workflows', 'ci.yml'), 'utf8');
    /** The text of one job: from its `  name:` key line to the next job. */
    const job = (name: string) => {
      const start = workflow.indexOf(`\n  ${name}:\n`);
      expect(start, name).toBeGreaterThan(0);
      const rest = workflow.slice(start + 1);
      const next = rest.slice(1).search(/\n {2}[a-z]+:\n/);
      return next < 0 ? rest : rest.slice(0, next + 1);
    };
    expect(job('test')).toMatch(/node: \[20, 22\]/);
    for (const step of [
      'npm ci',
      'npm run typecheck',
      'npx eslint .',
      'npx prettier --check .',
      'npx vitest run',
      'npm run build',
    ]) {
      expect(job('test'), step).toContain(step);
    }
    expect(job('infra')).toContain('az bicep build --file infra/main.bicep');
    expect(job('preview')).toContain('azd provision --preview');
    const deploy = job('deploy');
    expect(deploy).toMatch(/if: github\.event_name == 'push' && github\.ref == 'refs\/heads\/main'/);
    expect(deploy).toContain('needs: [test, infra]');
    expect(deploy).toMatch(/id-token: write/);
    expect(deploy).toContain('--federated-credential-provider github');
    expect(deploy).toMatch(/azd deploy/);
    // Only the jobs that sign in to Azure may ask for an OIDC token; nothing reads a stored secret.
    expect(workflow.match(/id-token: write/g)).toHaveLength(2);
    expect(workflow).not.toMatch(/secrets\./);
    expect(workflow).toMatch(/^permissions:\n {2}contents: read\n/m);
  });
});
