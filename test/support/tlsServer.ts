/** A bare STARTTLS server for TLS failure cases. */
import net from 'node:net';
import tls from 'node:tls';

/**
 * A bare SMTP server on loopback that offers STARTTLS and then speaks TLS with `tlsOptions` (a
 * certificate, and any version limits): for the TLS cases the sandbox does not cover (an old TLS version, an
 * expired certificate, another CA's certificate). After the handshake it answers anything with 221 and closes.
 */
export async function startTlsServer(tlsOptions: tls.TlsOptions): Promise<{ port: number; close(): Promise<void> }> {
  const server = net.createServer((socket) => {
    socket.on('error', () => {});
    socket.write('220 test.local ESMTP\r\n');
    let buffer = '';
    const onData = (chunk: Buffer) => {
      buffer += chunk.toString('latin1');
      for (let end = buffer.indexOf('\n'); end >= 0; end = buffer.indexOf('\n')) {
        const line = buffer.slice(0, end).trim().toUpperCase();
        buffer = buffer.slice(end + 1);
        if (line.startsWith('EHLO')) socket.write('250-test.local\r\n250 STARTTLS\r\n');
        else if (line === 'STARTTLS') {
          socket.off('data', onData);
          socket.write('220 2.0.0 SMTP server ready\r\n', () => {
            const secure = new tls.TLSSocket(socket, { isServer: true, ...tlsOptions });
            secure.on('error', () => {});
            secure.on('data', () => secure.write('221 bye\r\n', () => secure.end()));
          });
          return;
        } else socket.write('502 no\r\n');
      }
    };
    socket.on('data', onData);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

/** A STARTTLS server that speaks nothing newer than TLS 1.1, with `cert` (a certificate the client trusts). */
export function startTls11Server(cert: { keyPem: string; certPem: string }): ReturnType<typeof startTlsServer> {
  return startTlsServer({
    key: cert.keyPem,
    cert: cert.certPem,
    minVersion: 'TLSv1',
    maxVersion: 'TLSv1.1',
    ciphers: 'DEFAULT@SECLEVEL=0',
  });
}
