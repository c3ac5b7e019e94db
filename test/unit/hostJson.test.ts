/** host.json holds numbers the code also relies on: the two must not drift apart. */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { OUTBOX_MAX_DEQUEUE_COUNT } from '../../src/outbox/outboxQueue';

const hostJson = JSON.parse(readFileSync(path.resolve(__dirname, '../../host.json'), 'utf8')) as {
  extensions: { queues: { maxDequeueCount: number } };
};

describe('host.json', () => {
  it("has the outbox worker's maxDequeueCount: delivery counts its last chance before poison from it", () => {
    expect(hostJson.extensions.queues.maxDequeueCount).toBe(OUTBOX_MAX_DEQUEUE_COUNT);
  });
});
