/**
 * The build's training run for the app bundle's V8 code cache (src/codeCache.ts), run by scripts/build.mjs in a
 * fresh plain Node process: `node codeCacheTraining.js <dist>/functions/index.js`, with AzureWebJobsStorage pointing
 * at a throwaway Azurite.
 *
 * It loads the entry as the Functions worker does, answers one POST /api/messages through the app's own programming
 * model, and then writes the cache. A cache written right after loading holds only the bundle's top level; this one
 * also holds the functions the first accept runs (parsing, the outbox, the storage SDKs' request pipeline), which a
 * cold instance would otherwise compile while its first caller waits. Nothing of the send path is loaded here.
 */
import { captureRegistrations } from '../dev/functionsCore';
import { Invoker, jsonPostInput } from '../dev/invoker';
import { normalise } from '../dev/registrations';

/** The settings of a tenant that is never contacted: accepting a message reads and writes storage only. */
const TRAINING_SETTINGS: Record<string, string> = {
  MAIL_SENDER: 'training@contoso.test',
  MAIL_AUTH_MODE: 'client-secret',
  MAIL_TENANT_ID: '00000000-0000-0000-0000-000000000000',
  MAIL_CLIENT_ID: '00000000-0000-0000-0000-000000000000',
  MAIL_KEY_VAULT_URL: 'https://training.vault.azure.net',
  MAIL_PACING: 'off',
};

async function main(): Promise<void> {
  const entry = process.argv[2];
  if (!entry) throw new Error('usage: codeCacheTraining <dist/functions/index.js>');
  if (!process.env.AzureWebJobsStorage) throw new Error('codeCacheTraining: AzureWebJobsStorage is not set');
  for (const [name, value] of Object.entries(TRAINING_SETTINGS)) process.env[name] ??= value;
  const registrations = captureRegistrations(() => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    require(entry);
  });
  const fn = registrations.functions
    .map((f) => normalise(f.metadata, f.callback, process.env))
    .find((f) => f.kind === 'http' && f.route === 'messages' && f.methods.includes('POST'));
  if (!fn) throw new Error('the entry registered no POST /api/messages');
  const lines: string[] = [];
  const invoker = new Invoker(registrations, (line) => lines.push(line));
  const body = JSON.stringify({ to: 'first@contoso.test', subject: 'Training', text: 'The first accept.' });
  const response = await invoker.invoke(fn, jsonPostInput('http://127.0.0.1:7071/api/messages', body));
  const status = Number(response.returnValue?.http?.statusCode ?? 0);
  if (status !== 202) throw new Error(`the training POST /api/messages answered ${status}\n${lines.join('\n')}`);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  (require(entry) as { writeAppCodeCache(): void }).writeAppCodeCache();
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exit(1);
  },
);
