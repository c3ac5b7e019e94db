// The storage account of the host and the outbox: Entra ID only (no shared keys), the app's queues, tables and containers, lifecycle rules.
param name string
param location string
param tags object

@description('The Flex Consumption deployment container (the zip azd uploads).')
param deploymentContainerName string

@description('MAIL_RETENTION_DAYS: leftover payload and batch blobs are deleted a week after it.')
param retentionDays int

// The names in src/storage/storageClients.ts. The app would create them at first use, but creating them here means the identity
// needs no more than data roles, and a misnamed one shows up in the offline check (test/unit/infra.test.ts).
var queueNames = [
  'mail-outbox'
  'mail-outbox-poison'
  'mail-notifications'
  'mail-notifications-poison'
  'mail-digest-items'
  'mail-digest-items-poison'
]
var tableNames = [
  'MailStatus'
  'MailIdempotency'
  'MailBatches'
  'MailPacing'
  'MailSuppressions'
  'MailDigestItems'
]
var containerNames = [
  'mail-payloads'
  'mail-batches'
  'mail-pacing'
]

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    // Identity-based connections only: AzureWebJobsStorage__credential=managedidentity.
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    dnsEndpointType: 'Standard'
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [
  for containerName in containerNames: {
    parent: blobService
    name: containerName
    properties: {
      publicAccess: 'None'
    }
  }
]

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [
  for queueName in queueNames: {
    parent: queueService
    name: queueName
  }
]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [
  for tableName in tableNames: {
    parent: tableService
    name: tableName
  }
]

// What the hourly mailRetention timer cannot see: a payload whose accept died before its queue message, and batch
// blobs of a batch that never completed. Both are deleted a week after the retention period (docs/outbox.md).
resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'mail-payloads-leftovers'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: ['blockBlob']
              prefixMatch: ['mail-payloads/']
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterModificationGreaterThan: retentionDays + 7
                }
              }
            }
          }
        }
        {
          name: 'mail-batches-leftovers'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: ['blockBlob']
              prefixMatch: ['mail-batches/']
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterModificationGreaterThan: retentionDays + 7
                }
              }
            }
          }
        }
      ]
    }
  }
}

output name string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
output queueEndpoint string = account.properties.primaryEndpoints.queue
output tableEndpoint string = account.properties.primaryEndpoints.table
