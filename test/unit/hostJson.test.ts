/** host.json holds numbers the code also relies on: the two must not drift apart. */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { OUTBOX_MAX_DEQUEUE_COUNT } from '../../src/outbox/outboxQueue';

const hostJson = JSON.parse(readFileSync(path.resolve(__dirname, '../../host.json'), 'utf8')) as {
  extensions: { queues: { maxDequeueCount: number } };
  logging: { applicationInsights: { samplingSettings: { isEnabled: boolean; excludedTypes: string } } };
};

/** The telemetry types the host's adaptive sampling knows; any other name in excludedTypes is silently ignored. */
const SAMPLING_TYPES = ['Dependency', 'Event', 'Exception', 'PageView', 'Request', 'Trace'];

describe('host.json', () => {
  it("has the outbox worker's maxDequeueCount: delivery counts its last chance before poison from it", () => {
    expect(hostJson.extensions.queues.maxDequeueCount).toBe(OUTBOX_MAX_DEQUEUE_COUNT);
  });

  it('sampling excludes only telemetry types that exist: requests, exceptions and events are never sampled away', () => {
    const excluded = hostJson.logging.applicationInsights.samplingSettings.excludedTypes.split(';');
    for (const type of excluded) expect(SAMPLING_TYPES).toContain(type);
    expect(excluded).toEqual(expect.arrayContaining(['Request', 'Exception', 'Event']));
  });
});
