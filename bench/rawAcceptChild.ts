/**
 * The HTTP floor of an accept, in a process of its own like the dev host: a bare `node:http` server that reads the
 * JSON body and does what an accept must (one table insert with the content inline, then one queue send) with the
 * Azure SDK, and answers 202. No validation, no rendering, no Functions programming model: what any HTTP front to
 * the same two writes costs on this machine.
 *
 * Env: AzureWebJobsStorage. Prints `{"url":…}` on stdout when listening; SIGTERM, or stdin closing, stops it.
 */
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { TableClient } from '@azure/data-tables';
import { QueueClient } from '@azure/storage-queue';

async function main(): Promise<void> {
  const connectionString = process.env.AzureWebJobsStorage as string;
  const name = `benchhttpfloor${process.pid}`;
  const table = TableClient.fromConnectionString(connectionString, name, { allowInsecureConnection: true });
  const queue = new QueueClient(connectionString, name);
  await Promise.all([table.createTable(), queue.createIfNotExists()]);

  const server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      void (async () => {
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>;
        const id = randomUUID();
        const now = new Date().toISOString();
        await table.createEntity({
          partitionKey: id,
          rowKey: 'status',
          status: 'scheduled',
          source: 'http',
          attempts: 0,
          createdAt: now,
          dueAt: now,
          // Sized like bench/httpAccept.ts's floors: the rendered message is about twice the request's content.
          content0: JSON.stringify({ version: 1, message: { ...body, headers: {}, attachments: [] } }).repeat(2),
        });
        await queue.sendMessage(Buffer.from(JSON.stringify({ id })).toString('base64'), {
          visibilityTimeout: 86_400,
          messageTimeToLive: -1,
        });
        const answer = JSON.stringify({ id, status: 'scheduled' });
        response.writeHead(202, { 'content-type': 'application/json' }).end(answer);
      })().catch((error: unknown) => {
        response.writeHead(500).end(error instanceof Error ? error.message : 'failed');
      });
    });
  });
  server.listen(0, '127.0.0.1', () => {
    const { port } = server.address() as AddressInfo;
    process.stdout.write(`${JSON.stringify({ url: `http://127.0.0.1:${port}` })}\n`);
  });
  const stop = () => process.exit(0);
  process.once('SIGTERM', stop);
  process.stdin.resume();
  process.stdin.once('end', stop);
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
