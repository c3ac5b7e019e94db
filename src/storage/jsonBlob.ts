/**
 * JSON documents in Blob storage, as the message and batch stores keep them: written whole, optionally only where
 * there is none yet (so that a reader never sees a document replaced), and read back parsed, a missing blob being
 * "none" rather than a failure.
 */
import type { BlobClient, BlockBlobClient } from '@azure/storage-blob';
import { catchStatus, downloadBlob } from './storageClients';

/**
 * Uploads `value` as a JSON blob and returns true. With `ifAbsent`, writes only when the blob does not exist yet:
 * false (and nothing written) when it does, since another writer got there first.
 */
export async function uploadJson(
  blob: BlockBlobClient,
  value: unknown,
  options: { ifAbsent?: boolean } = {},
): Promise<boolean> {
  const upload = async () => {
    await blob.uploadData(Buffer.from(JSON.stringify(value)), {
      blobHTTPHeaders: { blobContentType: 'application/json' },
      ...(options.ifAbsent ? { conditions: { ifNoneMatch: '*' } } : {}),
    });
    return true;
  };
  return options.ifAbsent ? catchStatus(upload, [409, 412], false) : upload();
}

/**
 * Downloads and parses a JSON blob; undefined when the blob does not exist. Text that is not JSON throws a
 * SyntaxError, which is not a storage error (isStorageError): the caller tells a broken document from storage failing.
 */
export async function downloadJson(blob: BlobClient): Promise<unknown> {
  const buffer = await catchStatus(() => downloadBlob(blob), [404], undefined);
  return buffer && (JSON.parse(buffer.toString('utf8')) as unknown);
}
