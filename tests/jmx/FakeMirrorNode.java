import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.lang.management.ManagementFactory;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.rmi.registry.LocateRegistry;
import java.rmi.server.ExportException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import javax.management.Attribute;
import javax.management.AttributeList;
import javax.management.AttributeNotFoundException;
import javax.management.DynamicMBean;
import javax.management.MBeanAttributeInfo;
import javax.management.MBeanInfo;
import javax.management.MBeanServer;
import javax.management.ObjectName;
import javax.management.remote.JMXAuthenticator;
import javax.management.remote.JMXConnectorServer;
import javax.management.remote.JMXConnectorServerFactory;
import javax.management.remote.JMXPrincipal;
import javax.management.remote.JMXServiceURL;
import javax.security.auth.Subject;

/**
 * A stand-in for a Bitbucket mirror node's JMX, for the exporter's tests: it registers MBeans shaped like the
 * Dropwizard-style timers Bitbucket reports (Count, Mean, 50thPercentile ... DurationUnit, OneMinuteRate) and serves
 * them over JMX/RMI on 127.0.0.1 at a free port, optionally behind a username and password.
 *
 * Usage: java FakeMirrorNode.java [--auth USER:PASSWORD]
 * Prints "READY <port>" once serving. Then reads commands from standard input, one per line, answering "OK" or
 * "ERROR <why>"; it exits when standard input closes, so it never outlives the test that started it.
 *   timer OBJECT_NAME DURATION_UNIT RATE_UNIT COUNT MEAN STDDEV P50 P75 P95 P98 P99 P999 MAX MIN M1 MEAN_RATE M5 M15
 *   gauge OBJECT_NAME NAME=NUMBER [NAME=NUMBER ...]
 *   remove OBJECT_NAME
 */
public final class FakeMirrorNode {
    private static final String[] TIMER_DOUBLES = {
        "Mean", "StdDev", "50thPercentile", "75thPercentile", "95thPercentile", "98thPercentile", "99thPercentile",
        "999thPercentile", "Max", "Min", "OneMinuteRate", "MeanRate", "FiveMinuteRate", "FifteenMinuteRate",
    };

    /** An MBean whose attributes are whatever the test last set; read-only over JMX, like Bitbucket's. */
    static final class Bean implements DynamicMBean {
        private final Map<String, Object> values;

        Bean(Map<String, Object> values) {
            this.values = Collections.synchronizedMap(new LinkedHashMap<>(values));
        }

        @Override
        public Object getAttribute(String name) throws AttributeNotFoundException {
            Object value = values.get(name);
            if (value == null) {
                throw new AttributeNotFoundException(name);
            }
            return value;
        }

        @Override
        public void setAttribute(Attribute attribute) {
            throw new UnsupportedOperationException("read-only");
        }

        @Override
        public AttributeList getAttributes(String[] names) {
            AttributeList list = new AttributeList();
            for (String name : names) {
                Object value = values.get(name);
                if (value != null) {
                    list.add(new Attribute(name, value));
                }
            }
            return list;
        }

        @Override
        public AttributeList setAttributes(AttributeList attributes) {
            return new AttributeList();
        }

        @Override
        public Object invoke(String action, Object[] params, String[] signature) {
            throw new UnsupportedOperationException(action);
        }

        @Override
        public MBeanInfo getMBeanInfo() {
            List<MBeanAttributeInfo> infos = new ArrayList<>();
            synchronized (values) {
                for (Map.Entry<String, Object> entry : values.entrySet()) {
                    infos.add(new MBeanAttributeInfo(
                        entry.getKey(), entry.getValue().getClass().getName(), entry.getKey(), true, false, false));
                }
            }
            return new MBeanInfo(Bean.class.getName(), "fake mirror node bean",
                infos.toArray(new MBeanAttributeInfo[0]), null, null, null);
        }
    }

    private final MBeanServer server = ManagementFactory.getPlatformMBeanServer();

    private void put(String objectName, Map<String, Object> values) throws Exception {
        ObjectName name = new ObjectName(objectName);
        if (server.isRegistered(name)) {
            server.unregisterMBean(name);
        }
        server.registerMBean(new Bean(values), name);
    }

    private String handle(String line) throws Exception {
        String[] parts = line.trim().split("\\s+");
        switch (parts[0]) {
            case "timer": {
                if (parts.length != 5 + TIMER_DOUBLES.length) {
                    return "ERROR timer takes " + (4 + TIMER_DOUBLES.length) + " arguments";
                }
                Map<String, Object> values = new LinkedHashMap<>();
                values.put("DurationUnit", parts[2]);
                values.put("RateUnit", parts[3]);
                values.put("Count", Long.parseLong(parts[4]));
                for (int i = 0; i < TIMER_DOUBLES.length; i++) {
                    values.put(TIMER_DOUBLES[i], Double.parseDouble(parts[5 + i]));
                }
                put(parts[1], values);
                return "OK";
            }
            case "gauge": {
                Map<String, Object> values = new LinkedHashMap<>();
                for (int i = 2; i < parts.length; i++) {
                    String[] pair = parts[i].split("=", 2);
                    values.put(pair[0], Long.parseLong(pair[1]));
                }
                put(parts[1], values);
                return "OK";
            }
            case "remove":
                server.unregisterMBean(new ObjectName(parts[1]));
                return "OK";
            default:
                return "ERROR unknown command " + parts[0];
        }
    }

    private static JMXConnectorServer serve(MBeanServer server, String user, String password) throws Exception {
        // The registry needs a fixed port: take a free one, and try another if it is taken before we bind it.
        for (int attempt = 0; ; attempt++) {
            int port;
            try (ServerSocket probe = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
                port = probe.getLocalPort();
            }
            try {
                LocateRegistry.createRegistry(port);
            } catch (ExportException e) {
                if (attempt < 20) {
                    continue;
                }
                throw e;
            }
            Map<String, Object> env = new HashMap<>();
            if (user != null) {
                env.put(JMXConnectorServer.AUTHENTICATOR, (JMXAuthenticator) credentials -> {
                    if (credentials instanceof String[]) {
                        String[] pair = (String[]) credentials;
                        if (pair.length == 2 && user.equals(pair[0]) && password.equals(pair[1])) {
                            return new Subject(true, Collections.singleton(new JMXPrincipal(user)),
                                Collections.emptySet(), Collections.emptySet());
                        }
                    }
                    throw new SecurityException("Authentication failed");
                });
            }
            JMXServiceURL url = new JMXServiceURL(
                "service:jmx:rmi://127.0.0.1:" + port + "/jndi/rmi://127.0.0.1:" + port + "/jmxrmi");
            JMXConnectorServer connector = JMXConnectorServerFactory.newJMXConnectorServer(url, env, server);
            connector.start();
            return connector;
        }
    }

    public static void main(String[] args) throws Exception {
        System.setProperty("java.rmi.server.hostname", "127.0.0.1");
        String user = null;
        String password = null;
        for (int i = 0; i < args.length; i++) {
            if (args[i].equals("--auth") && i + 1 < args.length) {
                String[] pair = args[++i].split(":", 2);
                user = pair[0];
                password = pair[1];
            }
        }
        FakeMirrorNode node = new FakeMirrorNode();
        JMXConnectorServer connector = serve(node.server, user, password);
        System.out.println("READY " + connector.getAddress().getPort());
        System.out.flush();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        String line;
        while ((line = in.readLine()) != null) {
            if (line.isBlank()) {
                continue;
            }
            String answer;
            try {
                answer = node.handle(line);
            } catch (Exception e) {
                answer = "ERROR " + e;
            }
            System.out.println(answer);
            System.out.flush();
        }
        connector.stop();
        System.exit(0);
    }
}
