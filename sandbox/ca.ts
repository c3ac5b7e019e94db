/** A throwaway certificate authority for the sandbox: one CA per sandbox, leaf certificates for 127.0.0.1/localhost. */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import forge from 'node-forge';

/** A PEM key pair with its certificate. */
export interface IssuedCertificate {
  keyPem: string;
  certPem: string;
}

/** A CA that can sign server and client certificates. */
export interface CertificateAuthority {
  /** The CA certificate, to be trusted through MAIL_TLS_CA_FILE / NODE_EXTRA_CA_CERTS. */
  certPem: string;
  /** Issues a server certificate for the given DNS names and IP addresses. */
  issueServer(names?: string[], options?: { notBefore?: Date; notAfter?: Date }): IssuedCertificate;
  /**
   * Issues a certificate with no CA chain requirements (used as an app registration credential); `notAfter` in the
   * past gives an expired one.
   */
  issueClient(commonName: string, options?: { notBefore?: Date; notAfter?: Date }): IssuedCertificate;
}

const ONE_DAY_MS = 24 * 60 * 60 * 1000;
const RSA_BITS = 2048;

function newKeyPair(): { privateKey: forge.pki.rsa.PrivateKey; publicKey: forge.pki.rsa.PublicKey; keyPem: string } {
  const { privateKey } = generateKeyPairSync('rsa', {
    modulusLength: RSA_BITS,
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
  const forgeKey = forge.pki.privateKeyFromPem(privateKey);
  return {
    privateKey: forgeKey,
    publicKey: forge.pki.setRsaPublicKey(forgeKey.n, forgeKey.e),
    keyPem: privateKey,
  };
}

function serialNumber(): string {
  // Positive, 16 bytes: the high bit cleared so that DER does not read it as negative.
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] ?? 0) & 0x7f;
  return bytes.toString('hex');
}

/** Generates a new CA. `name` ends up in the subject so that two CAs can be told apart in errors. */
export function createCertificateAuthority(name = 'm365-mailer sandbox CA'): CertificateAuthority {
  const ca = newKeyPair();
  const caCert = forge.pki.createCertificate();
  caCert.publicKey = ca.publicKey;
  caCert.serialNumber = serialNumber();
  caCert.validity.notBefore = new Date(Date.now() - ONE_DAY_MS);
  caCert.validity.notAfter = new Date(Date.now() + 30 * ONE_DAY_MS);
  const caSubject = [{ name: 'commonName', value: name }];
  caCert.setSubject(caSubject);
  caCert.setIssuer(caSubject);
  caCert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  caCert.sign(ca.privateKey, forge.md.sha256.create());
  const certPem = forge.pki.certificateToPem(caCert);

  function issue(
    commonName: string,
    extensions: object[],
    notBefore = new Date(Date.now() - ONE_DAY_MS),
    notAfter = new Date(Date.now() + 30 * ONE_DAY_MS),
  ): IssuedCertificate {
    const leaf = newKeyPair();
    const cert = forge.pki.createCertificate();
    cert.publicKey = leaf.publicKey;
    cert.serialNumber = serialNumber();
    cert.validity.notBefore = notBefore;
    cert.validity.notAfter = notAfter;
    cert.setSubject([{ name: 'commonName', value: commonName }]);
    cert.setIssuer(caSubject);
    cert.setExtensions([{ name: 'basicConstraints', cA: false }, ...extensions]);
    cert.sign(ca.privateKey, forge.md.sha256.create());
    return { keyPem: leaf.keyPem, certPem: forge.pki.certificateToPem(cert) };
  }

  return {
    certPem,
    issueServer(names = ['localhost', '127.0.0.1'], options = {}) {
      const altNames = names.map((n) => (/^\d+\.\d+\.\d+\.\d+$/.test(n) ? { type: 7, ip: n } : { type: 2, value: n }));
      return issue(
        names[0] ?? 'localhost',
        [
          { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
          { name: 'extKeyUsage', serverAuth: true },
          { name: 'subjectAltName', altNames },
        ],
        options.notBefore,
        options.notAfter,
      );
    },
    issueClient(commonName, options = {}) {
      return issue(
        commonName,
        [
          { name: 'keyUsage', digitalSignature: true },
          { name: 'extKeyUsage', clientAuth: true },
        ],
        options.notBefore,
        options.notAfter,
      );
    },
  };
}
