//! The tray's icons: a disc in the link state's colour, drawn here so that
//! every platform shows the same picture without an icon theme or image files.

use crate::connection::LinkState;

/// The icon's width and height in pixels (hosts scale it to their size).
pub(crate) const ICON_SIZE: u32 = 32;

/// The disc's colour (RGB) for a state: grey, green, blue.
pub(crate) fn colour(state: LinkState) -> [u8; 3] {
    match state {
        LinkState::Disconnected => [0x8a, 0x8a, 0x8a],
        LinkState::Connected => [0x2e, 0x9d, 0x4f],
        LinkState::Relaying => [0x2d, 0x7f, 0xf9],
    }
}

/// The icon of a state as RGBA rows: a disc with a soft edge on transparency.
pub(crate) fn rgba(state: LinkState) -> Vec<u8> {
    let [r, g, b] = colour(state);
    let centre = (ICON_SIZE as f32 - 1.0) / 2.0;
    let radius = ICON_SIZE as f32 / 2.0 - 2.0;
    let mut pixels = Vec::with_capacity((ICON_SIZE * ICON_SIZE * 4) as usize);
    for y in 0..ICON_SIZE {
        for x in 0..ICON_SIZE {
            let distance = (x as f32 - centre).hypot(y as f32 - centre);
            // Fully opaque inside, fading over the last pixel of the edge.
            let alpha = (radius + 0.5 - distance).clamp(0.0, 1.0);
            pixels.extend_from_slice(&[r, g, b, (alpha * 255.0).round() as u8]);
        }
    }
    pixels
}

/// The icon of a state for the tray (`None` only if the drawing and its size
/// disagreed, which the test below rules out).
pub(crate) fn of(state: LinkState) -> Option<tray_icon::Icon> {
    tray_icon::Icon::from_rgba(rgba(state), ICON_SIZE, ICON_SIZE).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixel(icon: &[u8], x: u32, y: u32) -> [u8; 4] {
        let at = ((y * ICON_SIZE + x) * 4) as usize;
        [icon[at], icon[at + 1], icon[at + 2], icon[at + 3]]
    }

    #[test]
    fn each_state_is_a_disc_of_its_own_colour_on_transparency() {
        let states = [
            LinkState::Disconnected,
            LinkState::Connected,
            LinkState::Relaying,
        ];
        for state in states {
            let icon = rgba(state);
            assert_eq!(icon.len(), (ICON_SIZE * ICON_SIZE * 4) as usize);
            let [r, g, b] = colour(state);
            assert_eq!(pixel(&icon, ICON_SIZE / 2, ICON_SIZE / 2), [r, g, b, 255]);
            assert_eq!(pixel(&icon, 0, 0)[3], 0, "corners are transparent");
            assert_eq!(pixel(&icon, ICON_SIZE - 1, 0)[3], 0);
            assert!(of(state).is_some());
        }
        let colours: std::collections::HashSet<_> = states.map(colour).into();
        assert_eq!(colours.len(), 3, "the states differ in colour");
    }
}
