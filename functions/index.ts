/** The Functions entry (package.json main, bundled by scripts/build.mjs): importing each file registers its function. */
import { app } from '@azure/functions';
import { closeAppServices } from '../src/appServices';
import './messagesPost';
import './messagesGet';
import './templatesPreview';
import './outboxDeliver';
import './outboxPoison';
import './mailRetention';
import './notificationsPost';
import './notificationsGet';
import './notificationsFanout';
import './notificationsPoison';
import './health';
import './unsubscribe';
import './suppressionsGet';
import './suppressionsPost';
import './suppressionsDelete';
import './digestItemsPost';
import './digestRunPost';
import './digestGet';
import './digestItemsQueue';
import './digestItemsPoison';
import './digestTimer';

// Close the SMTP pool and flush telemetry when the host shuts the worker down.
app.hook.appTerminate(() => closeAppServices());
