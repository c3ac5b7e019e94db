/** The sandbox inbox's pure parts: download names that cannot break their header, cid: rewriting, telemetry matching. */
import { describe, expect, it } from 'vitest';
import PostalMime from 'postal-mime';
import type { CapturedEnvelope } from '../../sandbox/ingestion';
import { contentDisposition, safeFilename } from '../../sandbox/inbox/contentDisposition';
import { messageDocumentCsp, rewriteCidReferences } from '../../sandbox/inbox/messageDocument';
import { bounded, messageIdLocalPart, telemetryForMessage } from '../../sandbox/inbox/messageViews';
import { PACING_WINDOWS, pacingView, type PacingSource } from '../../sandbox/inbox/pacingView';
import { fullLimits, MailboxAccounting } from '../../sandbox/smtp/mailboxLimits';
import type { ExchangeSmtpMessage, ExchangeSmtpRejection, ExchangeSmtpViolation } from '../../sandbox/smtp/observation';

function event(id: string, name = 'MailSent'): CapturedEnvelope {
  return {
    name: 'Microsoft.ApplicationInsights.Event',
    iKey: 'k',
    time: '2026-12-01T00:00:00.000Z',
    tags: {},
    data: { baseType: 'EventData', baseData: { name, properties: { id } } },
    path: '/v2.1/track',
  };
}

async function received(raw: string): Promise<ExchangeSmtpMessage> {
  return {
    id: '0123456789abcdef',
    sessionId: 's',
    mailbox: 'alerts@contoso.test',
    authMethod: 'XOAUTH2',
    envelope: { from: 'alerts@contoso.test', to: ['a@example.com'] },
    raw: Buffer.from(raw),
    parsed: await PostalMime.parse(raw),
    receivedAt: 0,
    tlsVersion: 'TLSv1.3',
  };
}

describe('contentDisposition', () => {
  it('keeps quotes, backslashes, line breaks and directories out of the quoted name and encodes the exact one', () => {
    const header = contentDisposition('../../etc/"pass\r\nwd" ü.txt');
    expect(header).toBe(`attachment; filename="_passwd_ _.txt"; filename*=UTF-8''%22passwd%22%20%C3%BC.txt`);
    expect(header).not.toMatch(/[\r\n]/);
  });

  it('names a file with no usable name "attachment"', () => {
    expect(safeFilename(null)).toBe('attachment');
    expect(safeFilename(' ../.. ')).toBe('attachment');
    expect(contentDisposition('')).toBe(`attachment; filename="attachment"; filename*=UTF-8''attachment`);
  });

  it("percent-encodes the characters RFC 8187 does not allow bare: ' ( ) *", () => {
    expect(contentDisposition("it's (a) *.pdf")).toContain(`filename*=UTF-8''it%27s%20%28a%29%20%2A.pdf`);
  });
});

describe('the message document', () => {
  const attachments = [
    { filename: 'logo.png', mimeType: 'image/png', disposition: 'inline', contentId: '<logo@x>', content: '' },
    { filename: 'b.png', mimeType: 'image/png', disposition: 'inline', contentId: '<b%20c@x>', content: '' },
  ] as PostalMime.Attachment[];

  it('points cid: references at the attachment route and leaves unknown ones alone', () => {
    const html = '<img src="cid:logo@x"><img src=\'CID:LOGO@X\'><img src="cid:other@x"><img src="cid:b%2520c@x">';
    expect(rewriteCidReferences(html, attachments, (i) => `http://127.0.0.1:1/a/${i}`)).toBe(
      '<img src="http://127.0.0.1:1/a/0"><img src=\'http://127.0.0.1:1/a/0\'><img src="cid:other@x">' +
        '<img src="http://127.0.0.1:1/a/1">',
    );
  });

  it('has a policy with no script source, nothing remote and the sandbox directive', () => {
    const csp = messageDocumentCsp('http://127.0.0.1:5555');
    expect(csp).toContain("default-src 'none'");
    expect(csp).toContain('img-src data: cid: http://127.0.0.1:5555');
    expect(csp).not.toContain('script-src');
    expect(csp.split('; ')).toContain('sandbox');
  });
});

describe('telemetry of a message', () => {
  it("matches events by the outbox id in the Message-ID's local part, a batch message's by the hex after ~", async () => {
    const single = await received(
      'Message-ID: <0190a1b2-c3d4-7e5f-8a9b-000000000001@contoso.test>\r\nSubject: a\r\n\r\nHi\r\n',
    );
    const items = [
      event('0190a1b2-c3d4-7e5f-8a9b-000000000001'),
      event('0190a1b2-c3d4-7e5f-8a9b-000000000002'),
      event('0190A1B2-C3D4-7E5F-8A9B-000000000001', 'MailPaced'),
    ];
    expect(telemetryForMessage(single, items).map((t) => t.name)).toEqual(['MailSent', 'MailPaced']);

    const batch = await received('Message-ID: <0123456789abcdef0123456789abcdef@contoso.test>\r\n\r\nHi\r\n');
    expect(telemetryForMessage(batch, [event('batch-7~0123456789abcdef0123456789abcdef')])).toHaveLength(1);
    expect(telemetryForMessage(batch, [event('0123456789abcdef')])).toHaveLength(0);
  });

  it('finds nothing for a message without a Message-ID', async () => {
    const bare = await received('Subject: none\r\n\r\nHi\r\n');
    expect(messageIdLocalPart(bare.parsed.messageId)).toBe('');
    expect(telemetryForMessage(bare, [event('')])).toEqual([]);
  });

  it('cuts long fields and marks the cut', () => {
    expect(bounded('x'.repeat(10), 4)).toBe('xxxx…');
    expect(bounded('short', 10)).toBe('short');
  });
});

describe('the pacing view', () => {
  it('counts accepted messages per aligned window, the newest window last, against the limit', async () => {
    const limits = fullLimits({ ratePerMinute: 2, rateWindowMs: 1_000 });
    let now = 100_500;
    const accounting = new MailboxAccounting(limits, { now: () => now });
    const base = await received('Subject: x\r\n\r\nHi\r\n');
    const messages: ExchangeSmtpMessage[] = [];
    const violations: ExchangeSmtpViolation[] = [];
    // Three in the window that starts at 99,000 (one over the limit), one in the open window at 100,000.
    for (const at of [99_100, 99_200, 99_300, 100_400]) {
      messages.push({ ...base, receivedAt: at, mailbox: 'Alerts@contoso.test' });
      const violation = accounting.countAccepted('Alerts@contoso.test', at, 1);
      if (violation) violations.push(violation);
    }
    const rejection = (code: number, command: string): ExchangeSmtpRejection => ({
      sessionId: 's',
      mailbox: 'alerts@contoso.test',
      command,
      code,
      text: 'refused',
      at: 99_400,
    });
    const source: PacingSource = {
      now: () => now,
      limits,
      messages,
      violations,
      rejections: [rejection(432, 'MAIL'), rejection(452, 'RCPT')],
      maxInAnyWindow: (m) => accounting.maxInAnyWindow(m),
      maxConcurrentSessions: () => 1,
      recipientsInDailyWindow: (m) => accounting.recipientsInDailyWindow(m),
    };

    const [box, ...others] = pacingView(source).mailboxes;
    expect(others).toEqual([]);
    expect(box?.windows).toHaveLength(PACING_WINDOWS);
    expect(box?.windows.slice(-3).map((w) => w.count)).toEqual([0, 3, 1]);
    expect(box?.windows.at(-1)?.start).toBe(new Date(100_000).toISOString());
    expect(box?.violationCount).toBe(1);
    expect(box?.throttledCount).toBe(1);
    expect(box?.maxInAnyWindow).toBe(3);

    // Thirty windows later, every bar has moved out of the chart.
    now += PACING_WINDOWS * 1_000;
    expect(pacingView(source).mailboxes[0]?.windows.every((w) => w.count === 0)).toBe(true);
  });
});
