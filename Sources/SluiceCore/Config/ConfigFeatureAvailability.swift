/// Which configurable features are built in this version.
///
/// The decoder accepts every value of the configuration format, but a value
/// whose feature is not built yet is an error when written explicitly, and is
/// replaced by the best available value (with a notice) when it would only be
/// the default. To ship a feature, flip its static flag below: explicit values
/// are then accepted and the absent-key default becomes the specified one.
public struct FeatureAvailability: Sendable, Equatable {
    // MARK: - Flip these when the feature ships.

    /// `steering: least_loaded` (the specified default).
    public static let leastLoadedSteering = true
    /// `steering: shared_accept`.
    public static let sharedAcceptSteering = true
    /// `splice: sockmap` and `splice: auto` (the specified default).
    public static let sockmapSplice = true
    /// The `admin` block (admin socket and metrics endpoint).
    public static let adminEndpoints = true
    /// The `health_check` key of a pool.
    public static let healthChecks = true

    // MARK: - Instance form, so the decoder (and tests) can use any combination.

    public var leastLoadedSteering: Bool
    public var sharedAcceptSteering: Bool
    public var sockmapSplice: Bool
    public var adminEndpoints: Bool
    public var healthChecks: Bool

    public init(
        leastLoadedSteering: Bool,
        sharedAcceptSteering: Bool,
        sockmapSplice: Bool,
        adminEndpoints: Bool,
        healthChecks: Bool
    ) {
        self.leastLoadedSteering = leastLoadedSteering
        self.sharedAcceptSteering = sharedAcceptSteering
        self.sockmapSplice = sockmapSplice
        self.adminEndpoints = adminEndpoints
        self.healthChecks = healthChecks
    }

    /// What this build supports (the static flags).
    public static let current = FeatureAvailability(
        leastLoadedSteering: FeatureAvailability.leastLoadedSteering,
        sharedAcceptSteering: FeatureAvailability.sharedAcceptSteering,
        sockmapSplice: FeatureAvailability.sockmapSplice,
        adminEndpoints: FeatureAvailability.adminEndpoints,
        healthChecks: FeatureAvailability.healthChecks
    )

    /// Everything available (what the finished product will look like).
    public static let all = FeatureAvailability(
        leastLoadedSteering: true, sharedAcceptSteering: true, sockmapSplice: true,
        adminEndpoints: true, healthChecks: true
    )

    public func isAvailable(_ mode: SteeringMode) -> Bool {
        switch mode {
        case .leastLoaded: leastLoadedSteering
        case .hash: true
        case .sharedAccept: sharedAcceptSteering
        }
    }

    public func isAvailable(_ mode: SpliceMode) -> Bool {
        switch mode {
        case .auto, .sockmap: sockmapSplice
        case .splice, .copy: true
        }
    }

    /// The effective `steering` when the key is absent.
    public var defaultSteering: SteeringMode {
        isAvailable(SteeringMode.specifiedDefault) ? SteeringMode.specifiedDefault : .hash
    }

    /// The effective `splice` when the key is absent.
    public var defaultSplice: SpliceMode {
        isAvailable(SpliceMode.specifiedDefault) ? SpliceMode.specifiedDefault : .splice
    }
}
