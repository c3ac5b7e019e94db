/**
 * Loads the built app the way the Functions worker does, in a fresh plain Node process (test/e2e/acceptPath.test.ts
 * bundles this file), and says on stdout, in one JSON line, how the entry loaded the app (`loadedFrom`), then:
 *
 * - `acceptPathWorker <entry>`: answers one POST /api/messages, then delivers that message through the mail-outbox
 *   trigger, and says after each step whether the send path's file (dist/functions/sendPath.js) had been loaded:
 *   `{"loadedFrom":…,"accepted":…,"id":…,"sendPathAfterAccept":…,"sendPathAfterDelivery":…}`;
 * - `acceptPathWorker <entry> throw`: runs the mail-outbox trigger without storage settings and gives the stack of
 *   the error the app throws: `{"loadedFrom":…,"stack":…}`.
 */
import path from 'node:path';
import { captureRegistrations } from '../../dev/functionsCore';
import { Invoker, jsonPostInput } from '../../dev/invoker';
import { normalise } from '../../dev/registrations';

async function main(): Promise<void> {
  const entry = path.resolve(process.argv[2] ?? '');
  const sendPath = path.join(path.dirname(entry), 'sendPath.js');
  const loaded = () => require.cache[sendPath] !== undefined;
  const registrations = captureRegistrations(() => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    require(entry);
  });
  const functions = registrations.functions.map((f) => normalise(f.metadata, f.callback, process.env));
  const post = functions.find((f) => f.kind === 'http' && f.route === 'messages' && f.methods.includes('POST'));
  const deliver = functions.find((f) => f.name === 'outboxDeliver');
  if (!post || !deliver) throw new Error('the entry registered no POST messages or outboxDeliver function');
  const invoker = new Invoker(registrations, (line) => process.stderr.write(`${line}\n`));
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const loadedFrom = (require(entry) as { appLoadedFrom?: string }).appLoadedFrom;
  if (process.argv[3] === 'throw') {
    const stack = await invoker
      .invoke(deliver, { trigger: { string: '{"id":"x"}' }, triggerMetadata: { DequeueCount: { json: '1' } } })
      .then(
        () => undefined,
        (error: unknown) => (error instanceof Error ? error.stack : String(error)),
      );
    process.stdout.write(`${JSON.stringify({ loadedFrom, stack })}\n`);
    process.exit(0);
  }
  const body = JSON.stringify({ to: 'accept-path@example.com', subject: 'Accept path', text: 'first request' });
  const response = await invoker.invoke(post, jsonPostInput('http://127.0.0.1:7071/api/messages', body));
  const http = response.returnValue?.http;
  const text = http?.body?.bytes ? Buffer.from(http.body.bytes).toString('utf8') : (http?.body?.string ?? '{}');
  const accepted = JSON.parse(text) as { id?: string };
  const sendPathAfterAccept = loaded();
  // The queue message the accept wrote, as the host hands it over.
  await invoker.invoke(deliver, {
    trigger: { string: JSON.stringify({ id: accepted.id }) },
    triggerMetadata: { DequeueCount: { json: '1' } },
  });
  process.stdout.write(
    `${JSON.stringify({
      loadedFrom,
      accepted: Number(http?.statusCode ?? 0),
      id: accepted.id,
      sendPathAfterAccept,
      sendPathAfterDelivery: loaded(),
    })}\n`,
  );
  process.exit(0);
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
