/** The shared secret scanner finds every secret kind the sandbox hands out, planted in every form, and nothing in clean text. */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEV_ACCOUNT_KEY } from '../../dev/azurite';
import { appOnlyAccessTokenClaims, STORAGE_RESOURCE } from '../../sandbox/entra';
import { IDENTITY_HEADER_NAME, APP_SERVICE_MSI_API_VERSION } from '../../sandbox/managedIdentity';
import type { SandboxSecretKind } from '../../sandbox';
import {
  MIN_NEEDLE_CHARS,
  secretScanner,
  smtpMessagesDecoded,
  smtpWire,
  type LeakForm,
  type Needle,
} from '../support/secretScan';
import { message, sandboxMailer, startSandbox, type Sandbox, type TestMailer } from '../support/sandboxMailer';

const SANDBOX_KINDS: SandboxSecretKind[] = [
  'client-secret',
  'client-certificate-key',
  'app-password',
  'identity-header',
  'key-vault-secret',
  'access-token',
  'federation-assertion',
  'client-assertion',
];

let sandbox: Sandbox;
let needles: Needle[];

/** Bytes no needle is made of, so that a planted leak is found only through the needle itself. */
const noise = (bytes: number) => randomBytes(bytes);

/** base64 of `value` preceded by 3n + `offset` random bytes and followed by random bytes, as one encoding. */
function base64Inside(value: string, offset: 0 | 1 | 2, alphabet: 'base64' | 'base64url' = 'base64'): string {
  const prefix = noise(3 * (1 + Math.floor(Math.random() * 5)) + offset);
  return Buffer.concat([prefix, Buffer.from(value), noise(1 + Math.floor(Math.random() * 7))]).toString(alphabet);
}

/** Folds `text` into lines of `width` characters the way MIME base64 is. */
const wrap = (text: string, width: number, eol = '\r\n') => text.match(new RegExp(`.{1,${width}}`, 'gs'))!.join(eol);

/** Quoted-printable soft line breaks every 75 characters (what nodemailer does to a long text line). */
const softWrap = (text: string) => text.match(/.{1,75}/gs)!.join('=\r\n');

/** An XOAUTH2 AUTH line as nodemailer sends it, built here independently of the scanner. */
const xoauth2Line = (upn: string, token: string) =>
  `AUTH XOAUTH2 ${Buffer.from(`user=${upn}\x01auth=Bearer ${token}\x01\x01`).toString('base64')}`;

interface Plant {
  name: string;
  text: string;
  /** The form the scanner must report for this needle (either of two where their texts may coincide). */
  form: LeakForm | LeakForm[];
}

/** Every way a test plants `value`; the expected form follows from the value (a PEM key needs escaping in JSON…). */
function plants(value: string): Plant[] {
  const json = JSON.stringify(value).slice(1, -1);
  const jsonForm: LeakForm = json === value ? 'as-is' : 'json-escaped';
  const doubleJson = JSON.stringify({ line: JSON.stringify({ error: { detail: value } }) });
  const doubleForm: LeakForm = JSON.stringify(json).slice(1, -1) === json ? jsonForm : 'json-escaped-twice';
  const uri = encodeURIComponent(value);
  const form = new URLSearchParams({ client_secret: value }).toString().slice('client_secret='.length);
  const list: Plant[] = [
    {
      name: 'as-is in a log line',
      text: `2026-01-01T00:00:00Z INFO m365-mailer: got ${value} from somewhere`,
      form: 'as-is',
    },
    ...([0, 1, 2] as const).flatMap((offset) => [
      {
        name: `base64 at byte offset ${offset}`,
        text: `blob ${base64Inside(value, offset)} end`,
        form: `base64@${offset}` as LeakForm,
      },
      {
        name: `base64 at byte offset ${offset}, wrapped at 76 (MIME)`,
        text: `Content-Transfer-Encoding: base64\r\n\r\n${wrap(base64Inside(value, offset), 76)}\r\n`,
        form: `base64@${offset}` as LeakForm,
      },
    ]),
    {
      name: 'JSON-escaped in a JSON log line',
      text: JSON.stringify({ level: 'error', message: 'Key Vault answered', fields: { value } }),
      form: jsonForm,
    },
    { name: 'JSON inside JSON', text: doubleJson, form: doubleForm },
    {
      name: 'URL-encoded in a query string',
      text: `GET https://example.com/cb?state=1&secret=${uri}&x=y`,
      form: uri === value ? 'as-is' : 'url-encoded',
    },
    {
      name: 'form-encoded in a token request body',
      text: `grant_type=client_credentials&client_secret=${form}&scope=x`,
      form: form === value ? 'as-is' : form === uri ? 'url-encoded' : 'form-encoded',
    },
    // base64url is a form of its own only where the value's encoding has + or /; otherwise the texts are one.
    ...([0, 1, 2] as const).map((offset) => ({
      name: `base64url at byte offset ${offset}`,
      text: `jwt.${base64Inside(value, offset, 'base64url')}.sig`,
      form: [`base64url@${offset}`, `base64@${offset}`] as LeakForm[],
    })),
  ];
  if (value.length > 75 && !value.includes('=') && !/\s/.test(value)) {
    list.push({
      name: 'quoted-printable, soft-wrapped',
      text: `Body:\r\n${softWrap(`leak:${value}`)}\r\n`,
      form: 'as-is',
    });
  }
  if (value.includes('\n')) {
    list.push({
      name: 'with CRLF line ends',
      text: `pasted:\r\n${value.replace(/\r?\n/g, '\r\n')}`,
      form: 'whitespace-free',
    });
  }
  const pem = /-----BEGIN PRIVATE KEY-----([\s\S]*?)-----END PRIVATE KEY-----/.exec(value);
  if (pem) {
    list.push({ name: 'the key body on one line', text: `KEY=${pem[1]!.replace(/\s+/g, '')}`, form: 'pem-body' });
  }
  return list;
}

/** The sandbox's own MI endpoint, asked for a Storage token (as identity-based AzureWebJobsStorage does). */
async function storageToken(): Promise<void> {
  const url = new URL(sandbox.identity.endpoint);
  url.searchParams.set('resource', STORAGE_RESOURCE);
  url.searchParams.set('api-version', APP_SERVICE_MSI_API_VERSION);
  url.searchParams.set('client_id', sandbox.tenant.identity.clientId);
  const response = await fetch(url, { headers: { [IDENTITY_HEADER_NAME]: sandbox.identity.header } });
  expect(response.status).toBe(200);
}

beforeAll(async () => {
  sandbox = await startSandbox();
  // Real flows, so that every kind of secret exists: a client-secret and a client-certificate token (a client
  // assertion), Key Vault tokens of the managed identity, a federation assertion, the app password, a Storage token.
  const mailers: TestMailer[] = (['client-secret', 'client-certificate', 'federated-identity', 'basic'] as const).map(
    (mode) => sandboxMailer(sandbox, mode),
  );
  try {
    for (const m of mailers) await m.auth.get();
  } finally {
    await Promise.all(mailers.map((m) => m.close()));
  }
  await storageToken();
  needles = [
    ...sandbox.secrets(),
    { kind: 'storage-account-key', label: 'Azurite account key', value: DEV_ACCOUNT_KEY },
  ];
}, 60_000);

afterAll(async () => {
  await sandbox?.close();
});

describe('the needles', () => {
  it('cover every kind of secret the sandbox hands out, every audience, and the storage account key', () => {
    const kinds = new Set(needles.map((n) => n.kind));
    for (const kind of [...SANDBOX_KINDS, 'storage-account-key']) expect(kinds, kind).toContain(kind);
    const audiences = new Set(sandbox.issuedTokens().map((t) => t.audience));
    for (const audience of [
      'https://outlook.office365.com',
      'https://vault.azure.net',
      'https://storage.azure.com',
      'api://AzureADTokenExchange',
    ]) {
      expect(audiences, audience).toContain(audience);
    }
    const labels = needles.map((n) => n.label).join('\n');
    for (const name of ['mail-client-secret', 'mail-client-cert', 'mail-password']) {
      expect(labels).toContain(`Key Vault ${name}/`);
    }
  });

  it('a needle too short to look for fails the test instead of being skipped', () => {
    expect(() => secretScanner([{ kind: 'x', label: 'short', value: 'a'.repeat(MIN_NEEDLE_CHARS - 1) }])).toThrow(
      /short.*shorter than 8/,
    );
  });
});

describe('planted leaks', () => {
  it('each secret kind, planted in each form, is found and named by kind and form', () => {
    const scan = secretScanner(needles);
    let checked = 0;
    const missed: string[] = [];
    for (const needle of scan.needles) {
      for (const plant of plants(needle.value)) {
        const leaks = scan.find(plant.text, plant.name);
        checked++;
        const wanted = ([] as LeakForm[]).concat(plant.form);
        if (!leaks.some((l) => l.label === needle.label && l.kind === needle.kind && wanted.includes(l.form))) {
          missed.push(
            `${needle.kind} (${needle.label}) ${plant.name}: want ${wanted.join(',')}, got ${JSON.stringify(leaks.map((l) => l.form))}`,
          );
        }
        // A report never repeats the secret it found.
        for (const leak of leaks) expect(JSON.stringify(leak)).not.toContain(needle.value);
      }
    }
    expect(missed).toEqual([]);
    expect(checked).toBeGreaterThan(needles.length * 10);
    // Text bytes are < 0x80, so their base64 has + or / only where a byte like ~ ? > sits at the third place of a
    // group: such a value has a base64url form of its own at every offset, and it is reported as such.
    const tilde = secretScanner([{ kind: 'client-secret', label: 'tilde secret', value: '~?>'.repeat(8) }]);
    for (const offset of [0, 1, 2] as const) {
      const url = base64Inside('~?>'.repeat(8), offset, 'base64url');
      expect(tilde.find(url).map((l) => l.form)).toEqual([`base64url@${offset}`]);
    }
  });

  it('a token inside an XOAUTH2 AUTH line is found at whichever offset the UPN puts it; plain base64 of the token is not in the line', () => {
    const scan = secretScanner(needles);
    const token = sandbox.issuedTokens().find((t) => t.audience === 'https://outlook.office365.com')!.token;
    const seen = new Set<LeakForm>();
    for (const upn of ['a@contoso.test', 'ab@contoso.test', 'abc@contoso.test']) {
      const line = xoauth2Line(upn, token);
      // "user=" + upn + "\x01auth=Bearer " puts the token 18 + |upn| bytes in.
      const form = `base64@${(18 + upn.length) % 3}` as LeakForm;
      seen.add(form);
      expect(scan.find(line).map((l) => [l.kind, l.form])).toContainEqual(['access-token', form]);
      // What a scan for base64(token) alone looks for is not in the line at a shifted offset.
      if (form !== 'base64@0') expect(line.includes(Buffer.from(token).toString('base64').slice(0, 40))).toBe(false);
    }
    expect([...seen].sort()).toEqual(['base64@0', 'base64@1', 'base64@2']);
  });

  it('the app password inside AUTH PLAIN and AUTH LOGIN answers is found', () => {
    const scan = secretScanner(needles);
    const password = sandbox.tenant.exchange.mailboxes.get(sandbox.settings().MAIL_SENDER!)!.appPassword!;
    const plain = `AUTH PLAIN ${Buffer.from(`\0alerts@contoso.test\0${password}`).toString('base64')}`;
    const login = Buffer.from(password).toString('base64');
    for (const line of [plain, login]) {
      expect(scan.find(line).some((l) => l.kind === 'app-password' && l.form.startsWith('base64@'))).toBe(true);
    }
  });
});

describe('clean text', () => {
  it('finds nothing in text full of look-alikes: other tokens of the same issuer, another private key, random base64', async () => {
    const scan = secretScanner(needles);
    // Issued after the scanner was built: same header, same claims but jti, exp and signature. Not needles.
    const otherTokens = await Promise.all(
      ['https://outlook.office365.com', 'https://vault.azure.net'].map((audience) =>
        sandbox.issuer.sign(
          appOnlyAccessTokenClaims({
            tenantId: sandbox.tenant.tenantId,
            issuerUrl: sandbox.issuer.issuerUrl,
            audience,
            appId: sandbox.tenant.app.clientId,
            objectId: sandbox.tenant.app.servicePrincipalObjectId,
            roles: [],
            appidacr: '1',
          }),
          600,
        ),
      ),
    );
    const otherKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({
      type: 'pkcs8',
      format: 'pem',
    }) as string;
    const clean = [
      `2026-01-01T00:00:00Z INFO m365-mailer: sent {"id":"6f1c1a4e","smtpCode":250,"sender":"alerts@contoso.test"}`,
      `Authorization: Bearer ${otherTokens[0]}`,
      xoauth2Line('alerts@contoso.test', otherTokens[0]!),
      JSON.stringify({ token: otherTokens[1], key: otherKey }),
      otherKey,
      sandbox.clientCertificate.certPem,
      `AzureWebJobsStorage=DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=[redacted];`,
      wrap(randomBytes(4096).toString('base64'), 76),
      randomBytes(2048).toString('base64url'),
      encodeURIComponent(randomBytes(512).toString('base64')),
      `tenant ${sandbox.tenant.tenantId} client ${sandbox.tenant.app.clientId} identity ${sandbox.tenant.identity.clientId}`,
      `C: AUTH XOAUTH2 [redacted]\nS: 235 2.7.0 Authentication successful\nC: MAIL FROM:<alerts@contoso.test>`,
    ].join('\n');
    expect(scan.find(clean)).toEqual([]);
    expect(scan.findAll({ lines: clean.split('\n'), whole: clean })).toEqual([]);
    // The same text with one of them planted is not clean: the look-alikes do not hide a real one.
    const token = sandbox.issuedTokens()[0]!.token;
    expect(scan.find(`${clean}\n${xoauth2Line('x@contoso.test', token)}`)).toHaveLength(1);
  });
});

describe('what the SMTP server received, before it redacts', () => {
  /** A plain-TCP client that says `lines` and returns; the server records each before answering. */
  async function sayInClear(lines: string[]): Promise<void> {
    const socket = net.connect(sandbox.smtp.port, sandbox.smtp.host);
    const replies: string[] = [];
    let waiting: (() => void) | undefined;
    socket.on('data', (chunk: Buffer) => {
      replies.push(chunk.toString());
      waiting?.();
    });
    const reply = () => new Promise<void>((resolve) => (waiting = resolve));
    await reply(); // greeting
    for (const line of lines) {
      socket.write(`${line}\r\n`);
      await reply();
    }
    socket.end('QUIT\r\n');
    await new Promise((resolve) => socket.once('close', resolve));
  }

  it('an AUTH after STARTTLS holds the token (at its XOAUTH2 offset); every other line and the message are clean', async () => {
    sandbox.smtp.reset();
    const mailer = sandboxMailer(sandbox, 'client-secret');
    try {
      await mailer.sender.send(message(mailer, { subject: 'Scanned on the wire' }), { source: 'cli', id: 'wire-1' });
    } finally {
      await mailer.close();
    }
    const scan = secretScanner(sandbox.secrets());
    const wire = smtpWire(sandbox.smtp);
    expect(wire.auth.some((l) => l.startsWith('AUTH XOAUTH2 '))).toBe(true);
    const inAuth = scan.findAll({ auth: wire.auth });
    const upn = sandbox.settings().MAIL_SENDER!;
    expect(inAuth.map((l) => [l.kind, l.form])).toContainEqual(['access-token', `base64@${(18 + upn.length) % 3}`]);
    expect(wire.elsewhere.some((l) => /^MAIL FROM:/i.test(l))).toBe(true);
    expect(wire.elsewhere.some((l) => l.includes('Subject: Scanned on the wire'))).toBe(true);
    expect(scan.findAll({ elsewhere: wire.elsewhere, decoded: smtpMessagesDecoded(sandbox.smtp) })).toEqual([]);
  });

  it('credentials sent before STARTTLS, or in MAIL FROM, are caught on the wire though the transcript shows [redacted]', async () => {
    sandbox.smtp.reset();
    const user = sandbox.settings().MAIL_SENDER!;
    const password = sandbox.tenant.exchange.mailboxes.get(user)!.appPassword!;
    const token = sandbox
      .issuedTokens()
      .filter((t) => t.kind === 'access-token')
      .at(-1)!.token;
    await sayInClear([
      'EHLO leaky.client',
      `AUTH PLAIN ${Buffer.from(`\0${user}\0${password}`).toString('base64')}`,
      `MAIL FROM:<${token.slice(-40)}@x.test> X-TOKEN=${token}`,
    ]);
    const scan = secretScanner(sandbox.secrets());
    const wire = smtpWire(sandbox.smtp);
    expect(wire.auth).toEqual([]);
    const leaks = scan.findAll({ elsewhere: wire.elsewhere });
    expect(leaks.map((l) => [l.kind, l.form])).toEqual(
      expect.arrayContaining([
        ['app-password', `base64@${(2 + user.length) % 3}`],
        ['access-token', 'as-is'],
      ]),
    );
    expect(sandbox.smtp.sessions[0]?.authBeforeTls).toBe(true);
    // The redacted transcript alone would have passed: this is why the scans read the raw record.
    expect(scan.findAll({ transcript: sandbox.smtp.sessions.flatMap((s) => s.transcript) })).toEqual([]);
  });
});
